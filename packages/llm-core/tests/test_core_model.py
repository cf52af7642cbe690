"""Model construction: init, parameter count, names HF uses, dtypes."""

from __future__ import annotations

import math

import llm_kernels
import llm_kernels.memory
import llm_kernels.native
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
    assert all(k.dtype == torch.bfloat16 for k in model.new_cache(1, 4).k)
    assert model(torch.tensor([[1, 2]])).dtype == torch.bfloat16


@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "torch-only"])
@pytest.mark.parametrize(
    "overrides",
    [dict(mlp="swiglu", n_kv_head=2), dict(qkv_bias=True, window_size=3, sink_tokens=1)],
)
def test_fused_projections_keep_names_memory_and_outputs(overrides, native, monkeypatch):
    if native and not llm_kernels.native.available():
        pytest.skip(f"native kernels unavailable: {llm_kernels.native.error}")
    monkeypatch.setattr(llm_kernels.native, "_loaded", native)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=4, **overrides)
    model = Transformer(config).eval()
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        want = model(tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bytes_before = sum(p.numel() for p in model.parameters())
    model.fuse_projections()
    attn = model.model.layers[0].self_attn
    assert attn.qkv is not None and attn.qkv.active() is False  # gradients on: not used
    with torch.no_grad():
        assert attn.qkv.active()
        torch.testing.assert_close(model(tokens), want, atol=1e-5, rtol=1e-5)
        cache = model.new_cache(2, 16)
        stepped = [model(tokens[:, t : t + 1], cache)[:, 0] for t in range(9)]
    torch.testing.assert_close(torch.stack(stepped, 1), want, atol=1e-5, rtol=1e-5)
    assert attn.q_proj.weight.data_ptr() == attn.qkv.weight.data_ptr()  # a view, not a copy
    decoded = [attn.qkv.weight, attn.o_proj.weight, model.model.layers[1].mlp.down_proj.weight]
    if native:  # row-major, for llm_kernels' native small-row product
        assert all(w.is_contiguous() for w in decoded)
    else:  # input-major, for BLAS
        assert all(w.stride() == (1, w.shape[0]) for w in decoded)
    assert sum(p.numel() for p in model.parameters()) == bytes_before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    fused = attn.qkv
    model.fuse_projections()  # again: the intact fusion is kept, not rebuilt
    assert attn.qkv is fused and attn.q_proj.weight.data_ptr() == fused.weight.data_ptr()
    # training still sees the separate layers, and the fused product follows their updates
    loss = model(tokens).logsumexp(-1).mean()
    loss.backward()
    assert attn.q_proj.weight.grad is not None
    with torch.no_grad():
        attn.k_proj.weight.mul_(2)
        after = model(tokens)
        attn.qkv = None
        torch.testing.assert_close(after, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not llm_kernels.memory.huge_pages_available(), reason="no transparent huge pages here"
)
@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "torch-only"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_decode_weights_move_to_huge_pages_with_their_values(tie, native, monkeypatch):
    if native and not llm_kernels.native.available():
        pytest.skip(f"native kernels unavailable: {llm_kernels.native.error}")
    monkeypatch.setattr(llm_kernels.native, "_loaded", native)
    torch.manual_seed(0)
    # gate/up 4 MiB, down and the head 2 MiB: on huge pages; q/k/v and o (<2 MiB) stay put
    config = ModelConfig(
        vocab_size=2048, n_embd=256, n_layer=2, n_head=4, mlp="swiglu",
        intermediate_size=2048, tie_embeddings=tie,
    )  # fmt: skip
    model = Transformer(config).eval()
    tokens = torch.randint(0, 2048, (2, 9))
    with torch.no_grad():
        want = model(tokens)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse_projections()
    layer = model.model.layers[0]
    moved = [layer.mlp.gate_up.weight, layer.mlp.down_proj.weight, model.lm_head.weight]
    assert all(llm_kernels.on_huge_pages(w) for w in moved)
    assert not llm_kernels.on_huge_pages(layer.self_attn.qkv.weight)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    if native:
        assert all(w.is_contiguous() for w in moved)
    else:  # input-major for BLAS, the layout kept on the new pages
        assert all(w.stride() == (1, w.shape[0]) for w in moved[:2])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), want, atol=1e-5, rtol=1e-5)
    before = [w.data_ptr() for w in moved]
    model.fuse_projections()  # again: nothing moves twice
    assert [w.data_ptr() for w in moved] == before


def test_fusion_ends_when_weights_are_replaced():
    config = ModelConfig(vocab_size=50, n_embd=32, n_layer=1, n_head=2, mlp="swiglu")
    model = Transformer(config).eval().fuse_projections()
    fresh = Transformer(config).state_dict()
    model.load_state_dict(fresh, assign=True)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert not model.model.layers[0].self_attn.qkv.active()
        assert not model.model.layers[0].mlp.gate_up.active()
        want = Transformer(config).eval()
        want.load_state_dict(fresh)
        torch.testing.assert_close(model(tokens), want(tokens))


def test_a_fused_model_saves_and_loads_as_before(tmp_path):
    from llm_core import load_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=4, mlp="swiglu", n_kv_head=2)
    model = Transformer(config).eval().fuse_projections()
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    tokens = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=1e-6, rtol=1e-6)
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_logits_to_keep_runs_the_head_on_the_last_positions():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, n_embd=64, n_layer=2, n_head=4, mlp="swiglu")
    model = Transformer(config).eval()
    tokens = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        full = model(tokens)  # (2, 7, V)
        torch.testing.assert_close(model(tokens, logits_to_keep=1), full[:, -1:])
        torch.testing.assert_close(model(tokens, logits_to_keep=3), full[:, -3:])
        assert model(tokens, logits_to_keep=0).shape == full.shape
        cache = model.new_cache(2, 8)
        torch.testing.assert_close(model(tokens, cache, logits_to_keep=1), full[:, -1:])
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0, got -1"):
        model(tokens, logits_to_keep=-1)
