"""Dequantization of GGML tensor blocks to float32 torch tensors.

Each GGML type packs ``block_size`` weights into ``type_size`` bytes (``gguf.GGML_QUANT_SIZES``).
The common types (float, the 32-weight ``Q*_0``/``Q*_1`` blocks and the 256-weight k-quants) are
decoded here in torch, with the same float32 operations in the same order as gguf-py's numpy
reference, so the results are equal bit for bit (NaN and inf scales included). The rarer types
that gguf-py can decode (IQ*, TQ*, MXFP4, ...) go through ``gguf.quants.dequantize`` itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

QK_K = 256  # weights per k-quant super-block


def _half_to_float(half: torch.Tensor) -> torch.Tensor:
    """float16 -> float32 keeping NaN payloads, as numpy (and so gguf-py) does; torch's own
    conversion turns every NaN into the canonical 0x7fffffff."""
    out = half.float()
    bits = half.view(torch.int16).to(torch.int32) & 0xFFFF  # the raw 16 bits, zero-extended
    nan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0)
    if bool(nan.any()):
        payload = ((bits & 0x8000) << 16) | 0x7F800000 | ((bits & 0x03FF) << 13)
        out = torch.where(nan, payload.view(torch.float32), out)
    return out


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 stored at byte ``start`` of each block, as float32: ``[n, 1]``."""
    return _half_to_float(blocks[:, start : start + 2].contiguous().view(torch.float16))


def _nan_first(result: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``result`` of ``a + b`` or ``a - b`` with x86's NaN rule, which numpy follows: the first
    NaN operand is returned, quieted. (torch subtracts as ``a + (-1) * b``, which flips the sign
    of a NaN ``b``, and may order a two-NaN add the other way.)"""
    if not bool(result.isnan().any()):
        return result
    nan = torch.where(a.isnan(), a, torch.where(b.isnan(), b, result))
    quiet = (nan.view(torch.int32) | 0x00400000).view(torch.float32)  # the quiet bit set
    return torch.where(nan.isnan(), quiet, result)


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _nan_first(a + b, a, b)


def _sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _nan_first(a - b, a, b)


def _nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """Low then high nibbles of each run of ``group`` bytes: ``[n, m]`` -> ``[n, 2m]`` uint8."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, group)  # [n, m/group, 1, group]
    shifts = torch.tensor([0, 4], dtype=torch.uint8).reshape(1, 1, 2, 1)
    return ((q >> shifts) & 0x0F).reshape(n, -1)  # [n, 2m]


def _bits(packed: torch.Tensor, width: int, count: int, group: int) -> torch.Tensor:
    """Fields of ``width`` bits, lowest first, from runs of ``group`` bytes: ``count`` per byte."""
    n = packed.shape[0]
    shifts = torch.arange(0, width * count, width, dtype=torch.uint8).reshape(1, 1, count, 1)
    q = packed.reshape(n, -1, 1, group) >> shifts  # [n, m/group, count, group]
    return (q & ((1 << width) - 1)).reshape(n, -1)


def _high_bit_32(qh: torch.Tensor) -> torch.Tensor:
    """Bit ``i`` of a little-endian uint32 per block, for i in 0..31: ``[n, 4]`` -> ``[n, 32]``."""
    n = qh.shape[0]
    bits = (qh.reshape(n, 4, 1) >> torch.arange(8, dtype=torch.uint8).reshape(1, 1, 8)) & 1
    return bits.reshape(n, 32)  # byte b, bit j -> weight 8b + j


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)  # [n, 1]
    x = b[:, 2:].contiguous().view(torch.int8).float()  # [n, 32]
    return x * d


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:], 16).to(torch.int8) - 8  # [n, 32]
    return d * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:], 16).float()  # [n, 32]
    return _add(d * q, m)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 6:], 16) | (_high_bit_32(b[:, 2:6]) << 4)  # [n, 32] in 0..31
    return d * (q.to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 8:], 16) | (_high_bit_32(b[:, 4:8]) << 4)
    return _add(d * q.float(), m)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)  # [n, 16 sub-blocks, 1]
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _bits(qs, 2, 4, 32).reshape(n, 16, 16).float()  # [n, 16, 16]
    return _sub(dl * q, ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, packed = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    low = _bits(packed[:, :8], 4, 2, 8)  # [n, 16]: the low 4 bits of each 6-bit scale
    high = _bits(packed[:, 8:], 2, 4, 4)  # [n, 16]: the high 2 bits
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * scales).reshape(n, 16, 1)
    ql = _bits(qs, 2, 4, 32).reshape(n, 16, 16)
    qh = _bits(hmask, 1, 8, 32).reshape(n, 16, 16) ^ 1  # a set bit means no -4 offset
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins of a Q4_K/Q5_K block: ``[n, 12]`` -> two ``[n, 8]``."""
    s = packed.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]  # [n, 4] each
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)  # [n, 8 sub-blocks, 1]
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).float()
    return _sub(dl * q, ml).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:], 32).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1, 8, 32).reshape(n, 8, 32)
    q = (ql | (qh << 4)).float()
    return _sub(dl * q, ml).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()  # [n, 16]
    d = _f16(b, 208)
    dl = (d * scales).reshape(n, 16, 1)
    low = _nibbles(ql, 64).reshape(n, 8, 32)
    high = _bits(qh, 2, 4, 32).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, QK_K)


T = GGMLQuantizationType
BLOCK_DECODERS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    T.Q8_0: _q8_0,
    T.Q4_0: _q4_0,
    T.Q4_1: _q4_1,
    T.Q5_0: _q5_0,
    T.Q5_1: _q5_1,
    T.Q2_K: _q2_k,
    T.Q3_K: _q3_k,
    T.Q4_K: _q4_k,
    T.Q5_K: _q5_k,
    T.Q6_K: _q6_k,
}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
# Types gguf-py has no dequantizer for (integer tensors, F64) are not weights of a model we run.
_NO_DEQUANT = (T.F64, T.I8, T.I16, T.I32, T.I64)


def supported_types() -> list[GGMLQuantizationType]:
    """Every GGML type :func:`dequantize` decodes: ours, plus gguf-py's other dequantizers."""
    return [t for t in GGMLQuantizationType if _decodable(t)]


def _decodable(qtype: GGMLQuantizationType) -> bool:
    if qtype in FLOAT_TYPES or qtype in BLOCK_DECODERS:
        return True
    if qtype in _NO_DEQUANT or qtype not in GGML_QUANT_SIZES:
        return False
    return qtype in gguf_quants._type_traits  # gguf-py's registry of dequantizable types


def dequantize(
    data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]
) -> torch.Tensor:
    """Decode one GGML tensor to a float32 torch tensor of ``shape`` (torch order, rows first).

    ``data`` holds the raw tensor (any dtype; its bytes are read), typically a read-only view of
    the memory-mapped file; it is read once and not copied beyond the float32 result (F32 data is
    copied once, so the result does not alias the file). Raises ``ValueError`` when the byte count
    does not match ``shape`` and ``NotImplementedError`` for a type no dequantizer exists for.
    """
    n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if not _decodable(qtype):
        raise NotImplementedError(f"no dequantizer for GGML type {qtype.name}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if n_elements % block_size:
        raise ValueError(
            f"{n_elements} elements are not a whole number of {qtype.name} blocks of {block_size}"
        )
    raw = np.asarray(data).reshape(-1).view(np.uint8)
    want = n_elements // block_size * type_size
    if raw.size != want:
        raise ValueError(f"{qtype.name} tensor of shape {shape} needs {want} bytes, got {raw.size}")
    raw_t = _as_uint8_tensor(raw)  # [bytes]
    if qtype == T.F32:
        out = raw_t.view(torch.float32).clone()
    elif qtype == T.F16:
        out = _half_to_float(raw_t.view(torch.float16))
    elif qtype == T.BF16:
        out = raw_t.view(torch.bfloat16).float()
    elif qtype in BLOCK_DECODERS:
        blocks = raw_t.reshape(-1, type_size)  # [n_blocks, type_size]
        out = BLOCK_DECODERS[qtype](blocks)  # [n_blocks, block_size]
    else:
        with np.errstate(invalid="ignore", over="ignore"):  # as quiet as the torch paths
            decoded = gguf_quants.dequantize(raw.reshape(-1, type_size), qtype)
        out = torch.from_numpy(np.ascontiguousarray(decoded))
    return out.reshape(shape)


def _as_uint8_tensor(raw: np.ndarray) -> torch.Tensor:
    """A uint8 torch view of ``raw`` without a copy, also of a read-only memory map (torch warns
    that writes to such a tensor are undefined; nothing here writes to it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(raw)
