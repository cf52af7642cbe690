"""save_model / load_model: round trip, rebuild from the stored config, bad checkpoints, atomicity."""

from __future__ import annotations

import json

import pytest
import torch
from llm_core import CheckpointError, ModelConfig, Transformer, load_model, save_model
from llm_core import checkpoint as ckpt
from safetensors import safe_open
from safetensors.torch import save_file


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(
        vocab_size=120,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        mlp="swiglu",
        tie_embeddings=False,
    )
    return Transformer(ModelConfig(**{**fields, **overrides}))


def _assert_same(a: Transformer, b: Transformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_round_trip_is_identical(tmp_path):
    model = _model()
    save_model(model, tmp_path / "ck", tokenizer_json={"model": {"type": "BPE"}})
    loaded = load_model(tmp_path / "ck")
    _assert_same(model, loaded)
    assert loaded.config == model.config
    assert json.loads((tmp_path / "ck" / "tokenizer.json").read_text()) == {
        "model": {"type": "BPE"}
    }
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "llm-core", "format_version": "1"}


def test_tied_head_is_stored_once_and_retied(tmp_path):
    model = _model(tie_embeddings=True)
    save_model(model, tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118
    loaded = load_model(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    _assert_same(model, loaded)


def test_rebuilds_from_the_stored_vocabulary(tmp_path):
    model = _model(vocab_size=333)  # not the default config's 50257
    save_model(model, tmp_path / "ck")
    loaded = load_model(tmp_path / "ck")
    assert loaded.config.vocab_size == 333
    assert loaded(torch.tensor([[332]])).shape == (1, 1, 333)


def test_sharded_save(tmp_path):
    model = _model()
    save_model(model, tmp_path / "ck", max_shard_bytes=20_000)
    shards = sorted(p.name for p in (tmp_path / "ck").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "ck" / ckpt.INDEX_NAME).exists()
    _assert_same(model, load_model(tmp_path / "ck"))


def test_bf16_checkpoint_and_dtype_override(tmp_path):
    model = _model(dtype="bfloat16")
    save_model(model, tmp_path / "ck")
    assert load_model(tmp_path / "ck").dtype == torch.bfloat16
    as_f32 = load_model(tmp_path / "ck", dtype=torch.float32)
    assert as_f32.dtype == torch.float32 and as_f32.config.dtype == "float32"


# -- bad checkpoints: one clear error each -------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    save_model(_model(), tmp_path / "ck")
    return tmp_path / "ck"


def test_truncated_safetensors(saved):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a valid safetensors file"):
        load_model(saved)


def test_truncated_header(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(saved)


def test_wrong_format_version_in_config(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        load_model(saved)


def _rewrite_weights(saved, edit, version: str = "1") -> None:
    """Apply ``edit`` to the checkpoint's tensors and write them back with ``format_version``."""
    tensors = ckpt.checkpoint_state_dict(load_model(saved))
    edit(tensors)
    meta = {"format": "llm-core", "format_version": version}
    save_file(tensors, str(saved / "model.safetensors"), metadata=meta)


def test_wrong_format_version_in_weights(saved):
    _rewrite_weights(saved, lambda tensors: None, version="7")
    with pytest.raises(CheckpointError, match="format_version '7' is not supported"):
        load_model(saved)


def test_missing_tensor(saved):
    _rewrite_weights(saved, lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(saved)


def test_wrong_shape_names_tensor_and_both_shapes(saved):
    _rewrite_weights(saved, lambda tensors: tensors.update({"model.norm.weight": torch.ones(31)}))
    with pytest.raises(
        CheckpointError, match=r"'model.norm.weight' has shape \(31,\), expected \(32,\)"
    ):
        load_model(saved)


def test_unexpected_tensor(saved):
    _rewrite_weights(saved, lambda tensors: tensors.update({"model.extra.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.extra.weight'"):
        load_model(saved)


def test_directory_without_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model weights"):
        load_model(saved)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "empty")


def test_invalid_stored_config_names_the_field(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["n_kv_head"] = 3
    (saved / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"n_head \(4\) must be divisible by n_kv_head \(3\)"):
        load_model(saved)


# -- atomic writes ---------------------------------------------------------------------------


def test_failure_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    old = _model()
    save_model(old, path)
    calls = []

    def failing_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second shard
            raise OSError("disk full")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    new = _model(init_std=0.5)
    with pytest.raises(OSError, match="disk full"):
        save_model(new, path, max_shard_bytes=20_000)
    _assert_same(old, load_model(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directories left


def test_overwrite_replaces_the_checkpoint(tmp_path):
    path = tmp_path / "ck"
    save_model(_model(), path, max_shard_bytes=20_000)
    new = _model(vocab_size=64)
    save_model(new, path)
    _assert_same(new, load_model(path))
    assert not (path / ckpt.INDEX_NAME).exists()  # nothing of the old sharded layout remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_save_refuses_a_file_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_model(_model(), tmp_path / "f")
