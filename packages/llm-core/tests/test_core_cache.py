"""StaticKVCache: prefill then token-by-token decode equals one full forward."""

from __future__ import annotations

import pytest
import torch
from llm_core import CacheFullError, ModelConfig, Transformer
from llm_core.estimate import kv_cache_bytes

CONFIGS = {
    "llama": dict(mlp="swiglu", n_kv_head=2, tie_embeddings=False),
    "gpt": dict(mlp="gelu", norm="layernorm"),
    "sinusoidal": dict(position_encoding="sinusoidal"),
    "qwen-bias": dict(mlp="swiglu", n_kv_head=1, qkv_bias=True),
}


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(
        vocab_size=97, n_embd=64, n_layer=3, n_head=4, max_seq_len=64, init_std=0.1
    )  # logits of std ~0.8
    return Transformer(ModelConfig(**{**fields, **overrides})).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_then_decode_equals_full_forward(name):
    model = _model(**CONFIGS[name])
    tokens = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=2, capacity=40)
        steps = [model(tokens[:, :11], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(11, 30)]
    assert full.std() > 0.3, "weights too small for the comparison to mean anything"
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 30
    assert cache.key_positions.tolist() == [list(range(30))] * 2


def test_chunked_prefill_and_explicit_positions():
    model = _model(**CONFIGS["llama"])
    tokens = torch.randint(0, 97, (1, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(1, 24)
        chunks = [
            model(tokens[:, i : i + 8], cache, positions=torch.arange(i, i + 8)) for i in (0, 8, 16)
        ]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)


def test_positions_continue_after_the_cache():
    model = _model()
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache, positions=torch.tensor([10, 11, 12]))
    assert cache.next_positions(2).tolist() == [[13, 14]]


def test_cache_full_is_a_clear_error():
    model = _model()
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache)
        with pytest.raises(CacheFullError, match="capacity 4 tokens, 3 held, 2 more"):
            model(torch.tensor([[4, 5]]), cache)


def test_cache_is_preallocated_and_written_in_place():
    model = _model()
    cache = model.new_cache(1, 8)
    pointers = [t.data_ptr() for t in (*cache.k, *cache.v)]
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache)
        model(torch.tensor([[4]]), cache)
    assert [t.data_ptr() for t in (*cache.k, *cache.v)] == pointers
    for k in cache.k:  # (B, H_kv, S, D) per layer
        assert k[:, :, :4].abs().sum() > 0 and k[:, :, 4:].abs().sum() == 0
    # every layer owns its storage: a compiled step then mutates small inputs, not one base
    storages = {t.untyped_storage().data_ptr() for t in (*cache.k, *cache.v)}
    assert len(storages) == 2 * model.config.n_layer
    cache.reset()
    assert cache.length == 0 and cache.next_positions(1).tolist() == [[0]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_estimate_equals_allocated_bytes(dtype):
    model = _model(**CONFIGS["llama"])
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    cache = model.new_cache(batch_size=3, capacity=50, dtype=torch_dtype)
    allocated = sum(t.numel() * t.element_size() for t in (*cache.k, *cache.v, cache.positions))
    assert (
        kv_cache_bytes(model.config, capacity=50, batch=3, dtype=dtype) == allocated == cache.nbytes
    )


def test_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="positions"):
        model(torch.tensor([[1, 2, 3]]), positions=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown cache kind"):
        model.new_cache(1, 8, kind="paged")


def test_training_mode_backward_and_dropout():
    model = _model(dropout=0.5).train()
    tokens = torch.randint(0, 97, (2, 16))
    a, b = model(tokens), model(tokens)
    assert not torch.equal(a, b)  # dropout is active in training
    loss = torch.nn.functional.cross_entropy(a.view(-1, 97), tokens.view(-1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))
