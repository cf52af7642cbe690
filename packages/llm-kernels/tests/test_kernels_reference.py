"""The reference ops against HF transformers' Llama functions and a brute-force mask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_kernels import apply_rope, attention, attention_mask, reference, rms_norm, rope_cos_sin
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama as hf


def _worst(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a.float() - b.float()).abs()
    idx = divmod(int(diff.argmax()), 1)[0]
    return f"max abs diff {diff.max().item():.3e} at flat index {idx}"


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("impl", [attention, reference.attention])
def test_attention_matches_hf_eager_causal_gqa(heads, kv_heads, impl, hf_attention):
    torch.manual_seed(0)
    B, T, D = 2, 13, 16
    q = torch.randn(B, heads, T, D)
    k, v = torch.randn(B, kv_heads, T, D), torch.randn(B, kv_heads, T, D)
    pos = torch.arange(T)
    ours = impl(q, k, v, pos, pos)
    theirs = hf_attention(q, k, v, attention_mask(pos, pos))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=_worst(ours, theirs))


def test_attention_window_and_sinks_match_hf_eager_with_the_same_mask(hf_attention):
    torch.manual_seed(1)
    B, H, T, D = 1, 2, 40, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    pos = torch.arange(T)
    for window, sinks in [(5, 0), (5, 3), (1, 1), (64, 2)]:
        mask = attention_mask(pos, pos, window=window, sink_tokens=sinks)
        ours = attention(q, k, v, pos, pos, window=window, sink_tokens=sinks)
        torch.testing.assert_close(ours, hf_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
        assert mask[0, 0].sum(-1).tolist() == [
            sum(1 for j in range(T) if j <= i and (i - j < window or j < sinks)) for i in range(T)
        ]


def _brute_mask(q_pos, k_pos, window, sinks):
    return [
        [(0 <= k <= p) and (window is None or p - k < window or k < sinks) for k in k_pos]
        for p in q_pos
    ]


@settings(max_examples=150, deadline=None)
@given(
    q_pos=st.lists(st.integers(0, 60), min_size=1, max_size=12),
    k_pos=st.lists(st.integers(-1, 60), min_size=1, max_size=20),
    window=st.one_of(st.none(), st.integers(1, 70)),
    sinks=st.integers(0, 8),
)
def test_mask_rule_against_brute_force(q_pos, k_pos, window, sinks):
    mask = attention_mask(
        torch.tensor(q_pos), torch.tensor(k_pos), window=window, sink_tokens=sinks
    )
    assert mask[0, 0].tolist() == _brute_mask(q_pos, k_pos, window, sinks)


def test_attention_masks_by_position_not_slot_order():
    """Keys stored out of order (as in a ring buffer) give the same output as in order."""
    torch.manual_seed(2)
    B, H, T, D = 1, 2, 9, 8
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    pos = torch.arange(T)
    perm = torch.randperm(T)
    a = attention(q, k, v, torch.tensor([T - 1]), pos, window=4, sink_tokens=2)
    b = attention(
        q, k[:, :, perm], v[:, :, perm], torch.tensor([T - 1]), pos[perm], window=4, sink_tokens=2
    )
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_rows_that_see_nothing_are_zero_and_empty_slots_are_ignored():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    k_pos = torch.tensor([5, -1, -1])  # one real key at position 5, two empty slots
    out = attention(q, k, v, torch.tensor([3, 5]), k_pos)
    assert torch.all(out[0, 0, 0] == 0)
    torch.testing.assert_close(out[0, 0, 1], v[0, 0, 0])
    torch.testing.assert_close(reference.attention(q, k, v, torch.tensor([3, 5]), k_pos), out)


def test_attention_per_row_positions():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    k_pos = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]])
    out = attention(q, k, v, torch.tensor([[5], [2]]), k_pos)
    row1 = attention(q[1:], k[1:, :, :3], v[1:, :, :3], torch.tensor([2]), torch.arange(3))
    torch.testing.assert_close(out[1:], row1, atol=1e-6, rtol=1e-6)


def test_attention_scale_argument():
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    pos = torch.arange(5)
    torch.testing.assert_close(
        attention(q, k, v, pos, pos, scale=0.5), attention(q * (0.5 * math.sqrt(8)), k, v, pos, pos)
    )


def test_attention_with_a_precomputed_mask_equals_the_reference():
    torch.manual_seed(7)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    q_pos = torch.tensor([[6, 7, 8], [2, 3, 4]])
    k_pos = torch.tensor([list(range(9)), [0, 1, 2, 3, 4, -1, -1, -1, -1]])
    mask = attention_mask(q_pos, k_pos, window=3, sink_tokens=1)
    out = attention(q, k, v, q_pos, k_pos, window=3, sink_tokens=1, mask=mask)
    expected = reference.attention(q, k, v, q_pos, k_pos, window=3, sink_tokens=1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)])
def test_single_query_attention_matches_hf_eager(heads, kv_heads, hf_attention):
    torch.manual_seed(8)
    q = torch.randn(2, heads, 1, 16)
    k, v = torch.randn(2, kv_heads, 11, 16), torch.randn(2, kv_heads, 11, 16)
    q_pos = torch.tensor([[9], [4]])
    k_pos = torch.tensor([[*range(10), -1], [0, 1, 2, 3, 4, 5, -1, -1, -1, -1, -1]])
    mask = attention_mask(q_pos, k_pos, window=4, sink_tokens=1)
    ours = reference.single_query_attention(q, k, v, mask)
    theirs = hf_attention(q, k, v, mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=_worst(ours, theirs))
    nothing = attention_mask(torch.tensor([[0], [0]]), torch.full((2, 11), -1))
    assert torch.all(reference.single_query_attention(q, k, v, nothing) == 0)


def test_attention_inside_a_compiled_graph_equals_the_reference():
    """Compiled one-query attention takes the grouped-product path; same rule, same result."""
    torch.manual_seed(9)
    q, k, v = torch.randn(1, 6, 1, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    q_pos, k_pos = torch.tensor([[5]]), torch.tensor([[0, 1, 2, 3, 4, 5, -1]])
    compiled = torch.compile(lambda *a: attention(*a, window=3), fullgraph=True, backend="eager")
    out = compiled(q, k, v, q_pos, k_pos)
    expected = reference.attention(q, k, v, q_pos, k_pos, window=3)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_attention_rejects_bad_shapes():
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, k, k, torch.arange(4), torch.arange(4))
    with pytest.raises(ValueError, match="positions"):
        attention(q[:, :2], k, k, torch.arange(3), torch.arange(4))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_rope_matches_hf(dtype, tol):
    torch.manual_seed(5)
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0)
    rotary = hf.LlamaRotaryEmbedding(config)
    B, H, T, D = 2, 4, 11, 16
    q, k = torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, 2, T, D, dtype=dtype)
    positions = torch.stack([torch.arange(T), torch.arange(100, 100 + T)])
    cos_hf, sin_hf = rotary(q, positions)
    q_hf, k_hf = hf.apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    cos, sin = rope_cos_sin(positions, rotary.inv_freq)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf, atol=tol, rtol=tol)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf, atol=tol, rtol=tol)


def test_rope_rejects_mismatched_tables():
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope(torch.randn(1, 1, 2, 8), torch.randn(2, 3), torch.randn(2, 3))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rms_norm_matches_hf(dtype, tol):
    torch.manual_seed(6)
    norm = hf.LlamaRMSNorm(123, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(123))
    x = torch.randn(5, 7, 123, dtype=dtype)
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-6), norm(x), atol=tol, rtol=tol)
