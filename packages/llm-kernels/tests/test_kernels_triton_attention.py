"""The Triton flash-attention kernel against the torch reference (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
from llm_kernels import attention, reference

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _qkv(B, H, H_kv, Tq, Tk, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g).to(dtype)  # (B, H, Tq, D)
    k = torch.randn(B, H_kv, Tk, D, generator=g).to(dtype)  # (B, H_kv, Tk, D)
    v = torch.randn(B, H_kv, Tk, D, generator=g).to(dtype)
    return q.to(device), k.to(device), v.to(device)


# B, H, H_kv, T, D, window, sinks, dtype: window shorter and longer than the sequence,
# 0 and 4 sinks, GQA 1/2/4/8, each dtype
PREFILL = [
    (1, 4, 1, 123, 80, 32, 4, F32),
    (2, 4, 2, 37, 96, 200, 0, BF16),
    (1, 8, 1, 29, 16, 5, 4, F16),
    (1, 2, 2, 21, 128, None, 0, F32),
    (2, 8, 2, 19, 64, 6, 0, BF16),
    (1, 3, 3, 17, 256, 8, 4, F16),
]


@pytest.mark.parametrize("case", PREFILL, ids=str)
def test_prefill_matches_reference(case, triton_device, assert_close):
    B, H, H_kv, T, D, window, sinks, dtype = case
    q, k, v = _qkv(B, H, H_kv, T, T, D, dtype, triton_device)
    pos = torch.arange(T, device=triton_device)
    got = attention(q, k, v, pos, pos, window=window, sink_tokens=sinks)
    want = reference.attention(q, k, v, pos, pos, window=window, sink_tokens=sinks)
    assert got.shape == q.shape and got.dtype == dtype
    assert_close(got, want, f"prefill {case}")


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256, 80, 96])
def test_every_head_dim(head_dim, triton_device, assert_close):
    q, k, v = _qkv(1, 2, 1, 7, 7, head_dim, F32, triton_device, seed=head_dim)
    pos = torch.arange(7, device=triton_device)
    got = attention(q, k, v, pos, pos, window=4, sink_tokens=1)
    assert_close(got, reference.attention(q, k, v, pos, pos, window=4, sink_tokens=1), "head dim")


def _ring(start, window, sinks, capacity):
    """Slot positions of a sink ring buffer after ``start`` tokens: sinks pinned, the rest
    written round-robin (so the newest keys sit before older ones), unused slots -1."""
    pos = torch.full((capacity,), -1)
    for p in range(start):
        slot = p if p < sinks else sinks + (p - sinks) % (capacity - sinks)
        pos[slot] = p
    return pos


@pytest.mark.parametrize(
    "H,H_kv,Tq,dtype", [(4, 2, 1, BF16), (8, 1, 3, F32), (2, 2, 1, F16), (8, 8, 2, F32)], ids=str
)
def test_decode_over_a_wrapped_ring_cache(H, H_kv, Tq, dtype, triton_device, assert_close):
    window, sinks = 24, 4
    cap = window + sinks
    B, D = 2, 48
    q, k, v = _qkv(B, H, H_kv, Tq, cap, D, dtype, triton_device, seed=Tq)
    # batch rows at different points of their streams: one wrapped, one still filling
    k_pos = torch.stack([_ring(70, window, sinks, cap), _ring(11, window, sinks, cap)])
    q_pos = torch.stack([torch.arange(70 - Tq, 70), torch.arange(11 - Tq, 11)])  # (B, Tq)
    k_pos, q_pos = k_pos.to(triton_device), q_pos.to(triton_device)
    got = attention(q, k, v, q_pos, k_pos, window=window, sink_tokens=sinks)
    want = reference.attention(q, k, v, q_pos, k_pos, window=window, sink_tokens=sinks)
    assert_close(got, want, "decode")


def test_strided_views_and_shared_positions(triton_device, assert_close):
    # k and v as slices of a fused [B, T, 2, H_kv, D] projection, transposed: no copy
    B, H, H_kv, T, D = 2, 4, 2, 13, 32
    q = torch.randn(B, T, H, D).transpose(1, 2).to(triton_device)  # (B, H, T, D) strided
    kv = torch.randn(B, T, 2, H_kv, D).to(triton_device)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, H_kv, T, D)
    pos = torch.arange(5, 5 + T, device=triton_device)
    got = attention(q, k, v, pos, pos, window=6, sink_tokens=2)
    assert_close(got, reference.attention(q, k, v, pos, pos, window=6, sink_tokens=2), "strided")


def test_a_query_that_sees_nothing_gets_zeros(triton_device):
    q, k, v = _qkv(1, 2, 1, 2, 5, 16, F32, triton_device)
    q_pos = torch.tensor([3, 9], device=triton_device)
    k_pos = torch.tensor([4, 5, 6, -1, -1], device=triton_device)  # position 3 sees no key
    got = attention(q, k, v, q_pos, k_pos, window=4)
    assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))
    want = reference.attention(q, k, v, q_pos, k_pos, window=4)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_tiles_outside_the_window_are_never_read(triton_device, assert_close):
    # NaN in every value whose whole tile lies outside the window: a kernel that reads such a
    # tile multiplies its NaNs by zero weights and returns NaN
    T, window, sinks, D = 400, 40, 4, 16
    q, k, v = _qkv(1, 2, 1, 3, T, D, F32, triton_device)
    q_pos = torch.arange(T - 3, T, device=triton_device)
    k_pos = torch.arange(T, device=triton_device)
    clean = v.clone()
    v[:, :, 64 : T - window - 64] = float("nan")
    want = reference.attention(q, k, clean, q_pos, k_pos, window=window, sink_tokens=sinks)
    got = attention(q, k, v, q_pos, k_pos, window=window, sink_tokens=sinks)
    assert_close(got, want, "sorted keys")
    # the same keys out of order (no binary search): each tile's positions decide
    perm = torch.cat([torch.arange(T - 64, T), torch.arange(0, T - 64)]).to(triton_device)
    got = attention(q, k[:, :, perm], v[:, :, perm], q_pos, k_pos[perm], window=window,
                    sink_tokens=sinks)  # fmt: skip
    assert_close(got, want, "unsorted keys")


def test_dispatcher_takes_the_reference_path_when_gradients_are_needed(triton_device):
    q, k, v = _qkv(1, 2, 1, 5, 5, 16, F32, triton_device)
    q.requires_grad_(True)
    pos = torch.arange(5, device=triton_device)
    out = attention(q, k, v, pos, pos, window=3)
    out.sum().backward()  # SDPA path: differentiable
    assert q.grad is not None and q.grad.shape == q.shape


def test_head_dim_out_of_range_is_named(triton_device):
    q, k, v = _qkv(1, 1, 1, 2, 2, 8, F32, triton_device)
    pos = torch.arange(2, device=triton_device)
    with pytest.raises(ValueError, match="head_dim 8 is outside 16..256"):
        attention(q, k, v, pos, pos)
