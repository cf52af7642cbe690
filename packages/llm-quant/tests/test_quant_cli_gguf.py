"""``llm-quant inspect`` and ``llm-quant validate`` on a small GGUF file: tables, JSON, errors."""

from __future__ import annotations

import json
import sys

import gguf
import pytest
from llm_quant.cli import build_parser, main
from llm_quant.gguf import HEAD_ACTIVATIONS

T = gguf.GGMLQuantizationType


def test_inspect_json_lists_metadata_and_tensors(tiny_gguf, capsys):
    _, path = tiny_gguf("qwen2", T.Q8_0)
    assert main(["inspect", str(path), "--tensors", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    reader = gguf.GGUFReader(str(path))
    assert info["version"] == 3 and info["metadata"]["general.architecture"] == "qwen2"
    assert info["metadata"]["tokenizer.ggml.tokens"]["length"] == 96  # abbreviated
    assert info["metadata"]["qwen2.block_count"] == 2
    assert [t["name"] for t in info["tensors"]] == [t.name for t in reader.tensors]
    by_name = {t["name"]: t for t in info["tensors"]}
    q = by_name["blk.0.attn_q.weight"]
    assert (q["type"], q["shape"], q["bytes"]) == ("Q8_0", [64, 64], 64 * 64 // 32 * 34)
    assert by_name["blk.0.attn_q.bias"]["type"] == "F32"
    assert info["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)


def test_inspect_table(tiny_gguf, capsys):
    _, path = tiny_gguf("llama", T.Q4_1)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "llama.embedding_length" in out and "[96 items]" in out
    assert "--tensors lists them" in out and "blk.0.attn_q.weight" not in out
    assert main(["inspect", str(path), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in out and "Q4_1" in out


def test_errors_are_one_line(tmp_path, capsys, tiny_gguf, monkeypatch):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 40)
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-quant: error: ") and "not a GGUF file" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["inspect", str(tmp_path / "none.gguf")]) == 1
    assert "no such GGUF file" in capsys.readouterr().err
    _, path = tiny_gguf("llama")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    assert main(["validate", str(path)]) == 1
    assert "install llama-cpp-python" in capsys.readouterr().err


def test_validate_head_activations_option(capsys):
    parser = build_parser()
    assert parser.parse_args(["validate", "m.gguf"]).head_activations == HEAD_ACTIVATIONS
    for choice in ("float", "int16", "int8"):
        args = parser.parse_args(["validate", "m.gguf", "--head-activations", choice])
        assert args.head_activations == choice
    with pytest.raises(SystemExit):
        parser.parse_args(["validate", "m.gguf", "--head-activations", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
