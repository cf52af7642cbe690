"""Long context: the sink cache in both position modes, RoPE scaling against HF, HF windows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_core import ModelConfig, Transformer, load_model
from llm_core.estimate import kv_cache_bytes
from llm_core.hf import hf_config_to_model_config
from llm_core.rope import ntk_base, rope_frequencies
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
)
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = dict(
        vocab_size=97, n_embd=64, n_layer=3, n_head=4, n_kv_head=2, mlp="swiglu", init_std=0.1,
        window_size=6, sink_tokens=2, max_seq_len=64,
    )  # fmt: skip
    return Transformer(ModelConfig(**{**fields, **overrides})).eval()


def _stream(model: Transformer, tokens: torch.Tensor, cache, chunks: list[int]) -> torch.Tensor:
    """Feed ``tokens`` in chunks of the given sizes, then one at a time; all logits."""
    out, t = [], 0
    for size in chunks:
        out.append(model(tokens[:, t : t + size], cache))
        t += size
    out += [model(tokens[:, i : i + 1], cache) for i in range(t, tokens.shape[1])]
    return torch.cat(out, dim=1)


def test_absolute_mode_stream_three_times_the_cache_equals_masked_full_forward():
    model = _model()
    cache = model.new_cache(2, kind="sink")
    n = 3 * cache.capacity + 5  # 3 x 8 slots, and more
    tokens = torch.randint(0, 97, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)  # the explicit window + sink mask over the whole stream
        streamed = _stream(
            model, tokens, cache, chunks=[5, 10, 3]
        )  # a chunk larger than the window
    assert full.std() > 0.3
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=0)
    assert cache.positions.max().item() == n - 1
    assert sorted(cache.positions[0].tolist()) == [0, 1, *range(n - 6, n)]  # sinks + the window


@pytest.mark.parametrize("chunks", [[1], [4], [8]])
def test_cache_mode_each_step_equals_a_fresh_forward_over_sinks_and_window(chunks):
    """One layer, so every cached key is what a fresh forward computes (deeper layers' keys
    depend on the context each token saw when it was cached, which a fresh forward changes)."""
    model = _model(n_layer=1, position_mode="cache")
    fresh = Transformer(
        model.config.model_copy(
            update={"window_size": None, "sink_tokens": 0, "position_mode": "absolute"}
        )
    )
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    cache = model.new_cache(1, kind="sink")
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        streamed = _stream(model, tokens, cache, chunks)
        for p in range(30):
            visible = sorted(
                {*range(min(2, p + 1)), *range(max(0, p - 5), p + 1)}
            )  # sinks + window
            want = fresh(tokens[:, visible])[:, -1]  # positions 0..len-1
            torch.testing.assert_close(streamed[:, p], want, atol=1e-5, rtol=0, msg=f"step {p}")
    assert cache.key_positions.max().item() < cache.capacity  # positions stay inside the cache


def test_cache_mode_multi_layer_streams_past_the_cache():
    model = _model(position_mode="cache")
    cache = model.new_cache(1, kind="sink")
    tokens = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        chunked = _stream(model, tokens, cache, chunks=[30])  # evicting chunk: fed token by token
        cache.reset()
        stepped = _stream(model, tokens, cache, chunks=[])
    torch.testing.assert_close(chunked, stepped, atol=1e-5, rtol=0)
    assert torch.isfinite(chunked).all()


@settings(max_examples=25, deadline=None)
@given(
    window=st.integers(1, 9),
    sinks=st.integers(0, 3),
    chunks=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    extra=st.integers(0, 12),
)
def test_sink_cache_property_matches_masked_forward(window, sinks, chunks, extra):
    model = _model(n_layer=2, window_size=window, sink_tokens=sinks)
    tokens = torch.randint(
        0, 97, (1, sum(chunks) + extra), generator=torch.Generator().manual_seed(window)
    )
    with torch.no_grad():
        streamed = _stream(model, tokens, model.new_cache(1, kind="sink"), chunks)
        torch.testing.assert_close(streamed, model(tokens), atol=1e-5, rtol=0)


def test_sink_cache_memory_is_constant():
    model = _model()
    cache = model.new_cache(1, kind="sink")
    ptr, nbytes = cache.k.data_ptr(), cache.nbytes
    with torch.no_grad():
        model.prefill(torch.randint(0, 97, (1, 500)), cache, chunk_size=64)
    assert cache.k.data_ptr() == ptr and cache.nbytes == nbytes
    assert nbytes == kv_cache_bytes(model.config, capacity=8, batch=1, dtype="float32")


def test_prefill_returns_the_last_logits():
    model = _model(window_size=None, sink_tokens=0)
    tokens = torch.randint(0, 97, (2, 50))
    with torch.no_grad():
        want = model(tokens)[:, -1]
        got = model.prefill(tokens, model.new_cache(2, 64), chunk_size=7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sink_cache_on_a_full_attention_model_uses_the_cache_window():
    model = _model(window_size=None, sink_tokens=0)
    cache = model.new_cache(1, kind="sink", window=5, sink_tokens=1)
    windowed = Transformer(model.config.model_copy(update={"window_size": 5, "sink_tokens": 1}))
    windowed.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(
            _stream(model, tokens, cache, [3]), windowed.eval()(tokens), atol=1e-5, rtol=0
        )


def test_new_cache_errors():
    model = _model(window_size=None, sink_tokens=0)
    with pytest.raises(ValueError, match="needs a window"):
        model.new_cache(1, kind="sink")
    with pytest.raises(ValueError, match="8 slots, not 10"):
        _model().new_cache(1, 10, kind="sink")


# -- RoPE scaling against HF transformers ------------------------------------------------------

HF_BASE = dict(
    vocab_size=64, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
    intermediate_size=96, max_position_embeddings=16, initializer_range=0.2,
)  # fmt: skip
ROPE_CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "original_max_position_embeddings": 16,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    },
}


def _hf_config(rope: dict) -> LlamaConfig:
    return LlamaConfig(**HF_BASE, rope_parameters={"rope_theta": 10000.0, **rope})


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_rope_frequencies_equal_hf(name):
    hf_config = _hf_config(ROPE_CASES[name])
    rotary = LlamaRotaryEmbedding(hf_config)
    ours = hf_config_to_model_config({**hf_config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    seq_len = 100  # past max_position_embeddings, where dynamic scaling moves
    if name == "dynamic":
        rotary(torch.zeros(1), torch.arange(seq_len)[None])  # HF updates its frequencies on use
    inv_freq, scaling = rope_frequencies(ours, seq_len)
    torch.testing.assert_close(inv_freq, rotary.inv_freq, atol=0, rtol=1e-6)
    assert scaling == pytest.approx(rotary.attention_scaling, rel=1e-9)


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_logits_with_scaled_rope_equal_hf(name, tmp_path):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(_hf_config(ROPE_CASES[name])).eval()
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, 64, (1, 40))  # 2.5x max_position_embeddings
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(tmp_path)(tokens), hf(tokens).logits, atol=1e-4, rtol=0
        )


def test_static_ntk_equals_hf_dynamic_at_the_target_length():
    """NTK-aware: base * s^(d/(d-2)); HF's dynamic form with factor 1 at L = s * L0 is the same."""
    ours = ModelConfig(
        vocab_size=8, n_embd=64, n_layer=1, n_head=2, max_seq_len=16 * 8, original_max_seq_len=16,
        rope_scaling={"type": "ntk"},
    )  # fmt: skip
    inv_freq, _ = rope_frequencies(ours)
    assert ntk_base(10000.0, 8.0, 32) == pytest.approx(10000.0 * 8.0 ** (32 / 30))
    rotary = LlamaRotaryEmbedding(_hf_config({"rope_type": "dynamic", "factor": 1.0}))
    rotary(torch.zeros(1), torch.arange(16 * 8)[None])
    torch.testing.assert_close(inv_freq, rotary.inv_freq, atol=0, rtol=1e-6)


# -- HF sliding windows -----------------------------------------------------------------------


def test_mistral_window_reproduced_by_a_ring_cache_of_window_slots(tmp_path):
    torch.manual_seed(0)
    config = MistralConfig(**{**HF_BASE, "max_position_embeddings": 128}, sliding_window=6)
    hf = MistralForCausalLM(config).eval()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert (ours.config.window_size, ours.config.sink_tokens, ours.config.position_mode) == (
        6,
        0,
        "absolute",
    )
    cache = ours.new_cache(1, kind="sink")
    assert cache.capacity == 6
    tokens = torch.randint(0, 64, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(
            _stream(ours, tokens, cache, [4]), hf(tokens).logits, atol=1e-4, rtol=0
        )


def test_qwen2_sliding_window_layers():
    def qwen(**kw):
        raw = Qwen2Config(**HF_BASE, use_sliding_window=True, sliding_window=8, **kw).to_dict()
        return {**raw, "architectures": ["Qwen2ForCausalLM"]}

    assert hf_config_to_model_config(qwen(max_window_layers=0)).window_size == 8
    with pytest.raises(Exception, match="mix of sliding-window and full-attention layers"):
        hf_config_to_model_config(qwen(max_window_layers=1))
