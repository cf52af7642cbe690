"""Model construction: init, parameter count, names HF uses, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from llm_core import ModelConfig, Transformer
from llm_core.estimate import parameter_count


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(mlp="swiglu", n_kv_head=2, tie_embeddings=False),
        dict(norm="layernorm", qkv_bias=True, o_bias=True),
        dict(head_size=24, n_kv_head=1, mlp="swiglu", intermediate_size=100),
    ],
)
def test_parameter_count_formula_matches_the_module(overrides):
    config = ModelConfig(vocab_size=101, n_embd=64, n_layer=3, n_head=4, **overrides)
    assert parameter_count(config) == Transformer(config).num_parameters()


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, n_embd=256, n_layer=8, n_head=4, mlp="swiglu")
    model = Transformer(config)
    layer = model.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 0.002
    want = 0.02 / math.sqrt(2 * config.n_layer)
    assert abs(layer.self_attn.o_proj.weight.std().item() - want) < want * 0.1
    assert abs(layer.mlp.down_proj.weight.std().item() - want) < want * 0.1
    assert torch.all(layer.input_layernorm.weight == 1)


def test_hf_module_names():
    config = ModelConfig(
        vocab_size=50, n_embd=32, n_layer=1, n_head=2, mlp="swiglu", tie_embeddings=False
    )
    names = set(Transformer(config).state_dict())
    assert {
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    } == names


def test_tied_embeddings_share_storage():
    model = Transformer(ModelConfig(vocab_size=50, n_embd=32, n_layer=1, n_head=2))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_config_dtype_sets_the_parameters_dtype():
    model = Transformer(
        ModelConfig(vocab_size=50, n_embd=32, n_layer=1, n_head=2, dtype="bfloat16")
    )
    assert model.dtype == torch.bfloat16
    assert model.new_cache(1, 4).k.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2]])).dtype == torch.bfloat16
