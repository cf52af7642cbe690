"""`llm-quant quantize` and `llm-quant report` on a tiny checkpoint."""

from __future__ import annotations

import json

import torch
from llm_core import ModelConfig, Transformer, load_model, save_model
from llm_quant import Q4Linear
from llm_quant.cli import main

CONFIG = ModelConfig(vocab_size=256, n_embd=128, n_layer=1, n_head=4, n_kv_head=2, max_seq_len=64)


def checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_model(Transformer(CONFIG).eval(), tmp_path / "float")


def test_quantize_writes_a_checkpoint_that_loads(tmp_path, capsys):
    src = checkpoint(tmp_path)
    assert (
        main(
            [
                "quantize",
                str(src),
                "--scheme",
                "q4",
                "--group-size",
                "32",
                "--zero-points",
                "--out",
                str(tmp_path / "q4"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "q4 g32 zp: 6 linear layers quantized" in out and "MiB (fp32)" in out
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"]["scheme"] == {
        "name": "q4",
        "group_size": 32,
        "zero_points": True,
        "activations": "int8",
    }
    model = load_model(tmp_path / "q4")
    assert isinstance(model.model.layers[0].self_attn.o_proj, Q4Linear)


def test_report_prints_each_scheme(tmp_path, capsys):
    src = checkpoint(tmp_path)
    assert main(["report", str(src), "--rows", "2", "--length", "16", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "q4 g64" in out and "model.layers.0.mlp.down_proj" in out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert (
        main(
            [
                "quantize",
                str(tmp_path / "missing"),
                "--scheme",
                "int8",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("llm-quant: error: ")
        and "no such checkpoint" in err
        and err.count("\n") == 1
    )
    src = checkpoint(tmp_path)
    assert (
        main(
            [
                "quantize",
                str(src),
                "--scheme",
                "q4",
                "--group-size",
                "48",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "group_size must be 32, 64 or 128" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
