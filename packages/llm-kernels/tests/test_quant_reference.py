"""The torch dequantizers of the quantized layouts against gguf-py's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llm_kernels import reference

gguf = pytest.importorskip("gguf")

GGUF_KINDS = {
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, reference.dequantize_q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, reference.dequantize_q4_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, reference.dequantize_q4_1),
}


@pytest.mark.parametrize("kind", sorted(GGUF_KINDS))
@pytest.mark.parametrize(("n", "k"), [(1, 32), (7, 96), (13, 288)])
def test_gguf_dequantizers_match_gguf_py_bit_for_bit(kind, n, k):
    qtype, dequantize = GGUF_KINDS[kind]
    rng = np.random.default_rng(n * 1000 + k)
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
    w[0, :5] = 0.0  # an all-small start, and (k=32) a block that is not all zero
    blocks = gguf.quants.quantize(w, qtype)  # uint8 (n, k/32*B)
    want = gguf.quants.dequantize(blocks, qtype).astype(np.float32)
    got = dequantize(torch.from_numpy(blocks), k)
    assert got.dtype == torch.float32 and got.shape == (n, k)
    assert torch.equal(got, torch.from_numpy(want)), (got - torch.from_numpy(want)).abs().max()


@pytest.mark.parametrize("kind", sorted(GGUF_KINDS))
def test_gguf_dequantizers_reject_bad_layouts(kind):
    _, dequantize = GGUF_KINDS[kind]
    size = reference.BLOCK_BYTES[kind]
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize(torch.zeros(2, size, dtype=torch.uint8), 48)
    with pytest.raises(ValueError, match="bytes per row"):
        dequantize(torch.zeros(2, size + 1, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="uint8"):
        dequantize(torch.zeros(2, size, dtype=torch.int8), 32)


def _pack_q4(q: torch.Tensor, group: int) -> torch.Tensor:
    """Nibbles ``[N, K]`` (0..15) -> bytes ``[N, K/2]`` in the shared q4 order, element by
    element (the slow, obvious way)."""
    n, k = q.shape
    out = torch.zeros(n, k // 2, dtype=torch.uint8)
    for g in range(k // group):
        for j in range(group // 2):
            lo, hi = q[:, g * group + j], q[:, g * group + j + group // 2]
            out[:, g * group // 2 + j] = (lo | (hi << 4)).to(torch.uint8)
    return out


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("with_mins", [False, True])
def test_q4_dequantizer_follows_the_shared_layout(group, with_mins):
    torch.manual_seed(group)
    n, k = 5, 2 * 128
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scales = torch.rand(n, k // group).to(torch.float16)
    mins = -torch.rand(n, k // group).to(torch.float16) if with_mins else None
    s = scales.float().repeat_interleave(group, dim=1)  # (n, k)
    if with_mins:
        want = q.float() * s + mins.float().repeat_interleave(group, dim=1)
    else:
        want = (q.float() - 8) * s
    got = reference.dequantize_q4(_pack_q4(q, group), scales, mins, group)
    assert torch.equal(got, want)


def test_q4_with_group_32_is_gguf_q4_0_and_q4_1():
    # Group 32 is GGUF's own nibble order: the same bytes, with the scales split off.
    torch.manual_seed(0)
    n, k = 3, 96
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = _pack_q4(q, 32).reshape(n, k // 32, 16)  # (n, blocks, 16)
    d = torch.rand(n, k // 32).to(torch.float16)
    m = -torch.rand(n, k // 32).to(torch.float16)
    q4_0 = torch.cat((d.unsqueeze(-1).view(torch.uint8), packed), dim=-1).reshape(n, -1)
    dm = torch.stack((d, m), dim=-1).view(torch.uint8)  # (n, blocks, 4)
    q4_1 = torch.cat((dm, packed), dim=-1).reshape(n, -1)
    flat = packed.reshape(n, -1)
    assert torch.equal(
        reference.dequantize_q4_0(q4_0, k), reference.dequantize_q4(flat, d, None, 32)
    )
    assert torch.equal(reference.dequantize_q4_1(q4_1, k), reference.dequantize_q4(flat, d, m, 32))


def test_int8_dequantizer():
    q = torch.tensor([[1, -2, 127], [-127, 0, 5]], dtype=torch.int8)
    scales = torch.tensor([0.5, 2.0])
    want = torch.tensor([[0.5, -1.0, 63.5], [-254.0, 0.0, 10.0]])
    assert torch.equal(reference.dequantize_int8(q, scales), want)
    with pytest.raises(ValueError, match="scales must be"):
        reference.dequantize_int8(q, torch.ones(3))


def test_q4_dequantizer_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size"):
        reference.dequantize_q4(torch.zeros(1, 24, dtype=torch.uint8), torch.ones(1, 1), None, 48)
    with pytest.raises(ValueError, match="multiple of group_size"):
        reference.dequantize_q4(torch.zeros(1, 24, dtype=torch.uint8), torch.ones(1, 1), None, 32)
