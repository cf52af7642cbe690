"""The llm-core console script: info, estimate, init, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llm_core import ModelConfig
from llm_core.cli import main
from llm_core.estimate import estimate_memory

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_init_then_info(tmp_path, capsys):
    assert (
        main(["init", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "ck")]) == 0
    )
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ck"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    config = ModelConfig.from_file(CONFIGS / "tiny.yaml")
    assert info["kind"] == "llm-core v1"
    assert info["parameters"] == estimate_memory(config, 1, dtype="float32").weights // 4
    assert info["dtypes"] == ["F32"] and info["bytes"] > info["parameters"] * 4


def test_info_on_hf_directory(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "HF LlamaForCausalLM" in out and "n_kv_head" in out


def test_estimate_json_and_table(capsys):
    assert (
        main(
            [
                "estimate",
                "--config",
                str(CONFIGS / "llama-125m.yaml"),
                "--context",
                "32K,1M",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["context"] for r in rows] == [32768, 1048576]
    # 2 (k, v) x 12 layers x 4 KV heads x 64 dims x 2 bytes, plus an int64 position per slot
    assert rows[0]["kv_cache"] == 32768 * (2 * 12 * 4 * 64 * 2 + 8)
    assert (
        main(
            [
                "estimate",
                "--config",
                str(CONFIGS / "tiny.yaml"),
                "--context",
                "4096",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    assert "KV cache" in capsys.readouterr().out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_core.cli", *args], capture_output=True, text=True
    )


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    for args, message in [
        (["info", str(tmp_path / "missing")], "no such checkpoint directory"),
        (
            ["estimate", "--config", str(tmp_path / "none.yaml"), "--context", "1K"],
            "no such config file",
        ),
    ]:
        result = _run(*args)
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0 and message in result.stderr
        assert "Traceback" not in result.stderr
    bad = _run("estimate", "--config", "x.yaml", "--context", "lots")
    assert bad.returncode == 2 and "not a token count" in bad.stderr


def test_estimate_sink_column_equals_an_allocated_sink_cache(capsys):
    import torch
    from llm_core import Transformer

    args = ["estimate", "--config", str(CONFIGS / "tiny.yaml"), "--context", "1M", "--window", "64"]
    assert main([*args, "--sinks", "4", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    model = Transformer(ModelConfig.from_file(CONFIGS / "tiny.yaml"))
    cache = model.new_cache(1, kind="sink", window=64, sink_tokens=4, dtype=torch.bfloat16)
    assert row["kv_cache_sink"] == cache.nbytes
    assert row["kv_cache"] > 1000 * row["kv_cache_sink"]


def test_estimate_default_contexts_for_the_million_preset(capsys):
    assert main(["estimate", "--config", str(CONFIGS / "million_context.yaml"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["context"] for r in rows] == [32768, 131072, 524288, 1048576]
    assert len({r["kv_cache_sink"] for r in rows}) == 1  # constant in the context
