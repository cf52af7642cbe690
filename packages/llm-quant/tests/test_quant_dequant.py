"""Dequantization against gguf-py's numpy reference (``gguf.quants.dequantize``), bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_quant.dequant import BLOCK_DECODERS, FLOAT_TYPES, dequantize, supported_types

OURS = sorted([*FLOAT_TYPES, *BLOCK_DECODERS], key=int)  # decoded in torch by llm_quant
SPECIAL_HALVES = [
    0x7C00,
    0xFC00,
    0x7E00,
    0xFE00,
    0x7D01,
    0x0001,
    0x8000,
]  # inf, -inf, NaNs, tiny, -0


def reference(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN/inf scales
        return np.ascontiguousarray(gguf_quants.dequantize(raw, qtype), dtype=np.float32)


def scale_offsets(qtype: GGMLQuantizationType) -> list[int]:
    """Byte offsets of a block's float16 scales (d, and m / dmin where the format has one)."""
    T = GGMLQuantizationType
    return {
        T.Q8_0: [0], T.Q4_0: [0], T.Q5_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2],
        T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    }.get(qtype, [])  # fmt: skip


def assert_same_values(ours: torch.Tensor, expected: np.ndarray) -> None:
    """Every non-NaN value bit for bit (signed zeros, infinities, subnormals); NaN where the
    reference has NaN. (Where both operands of an add are NaN, numpy's pick between their two
    payloads depends on which of its SIMD loops runs, so payloads are compared exactly only in
    the single-NaN cases of :func:`test_every_scale_special_value`.)"""
    got = ours.numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(got[finite].view(np.uint32), expected[finite].view(np.uint32))


@st.composite
def blocks(draw):
    qtype = draw(st.sampled_from(OURS))
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows = draw(st.integers(1, 3))
    per_row = draw(st.integers(1, 4))
    raw = np.frombuffer(
        draw(st.binary(min_size=rows * per_row * type_size, max_size=rows * per_row * type_size)),
        dtype=np.uint8,
    ).copy()
    raw = raw.reshape(rows, per_row * type_size)
    specials = draw(st.lists(st.sampled_from(SPECIAL_HALVES), max_size=3))
    blocks_view = raw.reshape(-1, type_size)
    for value in specials:  # a NaN / inf / subnormal scale in a random block
        offsets = scale_offsets(qtype) or ([0] if qtype == GGMLQuantizationType.F16 else [])
        if not offsets:
            break
        b = draw(st.integers(0, blocks_view.shape[0] - 1))
        o = draw(st.sampled_from(offsets))
        blocks_view[b, o : o + 2] = np.frombuffer(np.uint16(value).tobytes(), dtype=np.uint8)
    return qtype, raw, (rows, per_row * block_size)


@settings(max_examples=300, deadline=None)
@given(blocks())
def test_dequantize_equals_gguf_py_bit_for_bit(case):
    qtype, raw, shape = case
    ours = dequantize(raw, qtype, shape)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == shape
    assert_same_values(ours, reference(raw, qtype))


@pytest.mark.parametrize("qtype", OURS, ids=lambda t: t.name)
def test_every_scale_special_value(qtype):
    """Each scale slot in turn set to inf, -inf, a quiet or signalling NaN, a subnormal or -0:
    the results, NaN payloads included, equal gguf-py's bit for bit."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    offsets = scale_offsets(qtype) or [0]
    for value in SPECIAL_HALVES:
        for offset in offsets:
            raw = rng.integers(0, 256, size=(4, type_size), dtype=np.uint8)
            raw[:, offset : offset + 2] = np.frombuffer(np.uint16(value).tobytes(), dtype=np.uint8)
            if qtype == GGMLQuantizationType.F32:
                raw = raw.view(np.uint32).copy()
                raw[:, 0] = 0x7F800001  # a signalling NaN float32
                raw = raw.view(np.uint8)
            shape = (4, GGML_QUANT_SIZES[qtype][0] * raw.shape[1] // type_size)
            ours = dequantize(raw, qtype, shape).numpy()
            np.testing.assert_array_equal(
                ours.view(np.uint32), reference(raw, qtype).view(np.uint32)
            )


def test_supported_types_cover_gguf_py():
    """Every type gguf-py dequantizes is supported; the rest go through gguf-py itself."""
    gguf_py = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *gguf_quants._type_traits}
    assert gguf_py <= set(supported_types())
    rng = np.random.default_rng(0)
    for qtype in sorted(set(supported_types()) - set(OURS), key=int):
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(2, type_size), dtype=np.uint8)
        ours = dequantize(raw, qtype, (2, block_size))
        assert tuple(ours.shape) == (2, block_size)
        np.testing.assert_array_equal(
            ours.numpy().view(np.uint32), reference(raw, qtype).view(np.uint32)
        )


def test_wrong_byte_count_and_unknown_type():
    with pytest.raises(ValueError, match="needs 68 bytes, got 34"):
        dequantize(np.zeros(34, np.uint8), GGMLQuantizationType.Q8_0, (64,))
    with pytest.raises(ValueError, match="not a whole number of Q8_0 blocks"):
        dequantize(np.zeros(34, np.uint8), GGMLQuantizationType.Q8_0, (33,))
    with pytest.raises(NotImplementedError, match="I32"):
        dequantize(np.zeros(4, np.uint8), GGMLQuantizationType.I32, (1,))
