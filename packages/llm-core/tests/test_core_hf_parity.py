"""Logits of HF checkpoints loaded with load_model against HF transformers itself."""

from __future__ import annotations

import json

import pytest
import torch
from llm_core import CheckpointError, load_model
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SMALL = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.2,  # larger than HF's default so the logits are far from uniform
)

CASES = {
    "llama-gqa-untied": (
        LlamaForCausalLM,
        LlamaConfig(**SMALL, num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False),
    ),
    "qwen2-bias-tied": (
        Qwen2ForCausalLM,
        Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True),
    ),
    "mistral-window": (
        MistralForCausalLM,
        MistralConfig(**SMALL, num_key_value_heads=1, sliding_window=7),
    ),
    "llama-head-dim": (
        LlamaForCausalLM,
        LlamaConfig(**SMALL, num_key_value_heads=4, head_dim=24, attention_bias=True),
    ),
}


def _save_hf(cls, config, path, **kwargs):
    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(path, **kwargs)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(name, tmp_path):
    cls, config = CASES[name]
    hf = _save_hf(cls, config, tmp_path)
    ours = load_model(tmp_path)
    tokens = torch.randint(
        0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        want = hf(tokens).logits
        got = ours(tokens)
    assert want.std() > 0.1, "test weights too small to tell models apart"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with torch.no_grad():  # fused q/k/v and gate/up projections: the same logits
        fused = ours.fuse_projections()(tokens)
    torch.testing.assert_close(fused, want, atol=1e-4, rtol=0)
    if name == "qwen2-bias-tied":
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        assert ours.config.qkv_bias and ours.config.tie_embeddings
    if name == "mistral-window":
        assert ours.config.window_size == 7 and ours.config.sink_tokens == 0


def test_sharded_hf_checkpoint_loads(tmp_path):
    cls, config = CASES["llama-gqa-untied"]
    hf = _save_hf(cls, config, tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    tokens = torch.arange(20).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(tmp_path)(tokens), hf(tokens).logits, atol=1e-4, rtol=0
        )


def _rewrite_config(path, edit):
    raw = json.loads((path / "config.json").read_text())
    edit(raw)
    (path / "config.json").write_text(json.dumps(raw))


def test_transformers_4x_config_loads(tmp_path):
    """A 4.x config: rope_theta and rope_scaling at the top level, torch_dtype."""
    cls, config = CASES["llama-gqa-untied"]
    hf = _save_hf(cls, config, tmp_path)

    def to_4x(raw):
        raw.pop("rope_parameters", None)
        raw.pop("dtype", None)
        raw.update(
            rope_theta=500000.0,
            rope_scaling=None,
            torch_dtype="float32",
            transformers_version="4.46.0",
        )

    _rewrite_config(tmp_path, to_4x)
    tokens = torch.arange(16).unsqueeze(0)
    ours = load_model(tmp_path)
    assert ours.config.rope_base == 500000.0
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda r: r.update(architectures=["GPT2LMHeadModel"]),
            "architecture 'GPT2LMHeadModel' is not supported",
        ),
        (
            lambda r: r.update(
                rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "factor": 8.0}
            ),
            "rope type 'longrope'",
        ),
        (
            lambda r: (
                r.pop("rope_parameters", None),
                r.update(rope_scaling={"type": "su", "factor": 2.0}),
            ),
            "rope type 'su'",
        ),
        (lambda r: r.update(hidden_act="gelu"), "hidden_act 'gelu'"),
        (lambda r: r.pop("hidden_size"), "missing field 'hidden_size'"),
    ],
)
def test_unsupported_hf_configs_are_refused_by_name(tmp_path, edit, message):
    cls, config = CASES["llama-gqa-untied"]
    _save_hf(cls, config, tmp_path)
    _rewrite_config(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(tmp_path)
