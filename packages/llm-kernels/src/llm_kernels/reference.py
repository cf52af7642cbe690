"""Torch reference implementations: the ground truth every kernel is tested against.

Shapes follow the model code: queries ``[B, H, Tq, D]``, keys and values ``[B, H_kv, Tk, D]``,
positions ``[B, T]`` (or ``[T]``, shared by the batch). A key slot whose position is negative is
empty and never attended to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_mask(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sink_tokens: int = 0,
) -> torch.Tensor:
    """Boolean mask ``[B, 1, Tq, Tk]`` (True = attend) from query and key positions.

    The attention rule: a query at position ``p`` sees a key at position ``k`` when ``k <= p``
    and (``p - k < window`` or ``k < sink_tokens``); ``window=None`` means no window. Keys with
    a negative position (empty cache slots) are never seen.
    """
    if q_pos.dim() == 1:
        q_pos = q_pos.unsqueeze(0)
    if k_pos.dim() == 1:
        k_pos = k_pos.unsqueeze(0)
    p = q_pos.unsqueeze(-1)  # (B, Tq, 1)
    k = k_pos.unsqueeze(-2)  # (B, 1, Tk)
    mask = (k <= p) & (k >= 0)
    if window is not None:
        mask = mask & (((p - k) < window) | (k < sink_tokens))
    return mask.unsqueeze(1)  # (B, 1, Tq, Tk)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sink_tokens: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked softmax attention with grouped KV heads, computed in float32.

    ``q`` is ``[B, H, Tq, D]``; ``k`` and ``v`` are ``[B, H_kv, Tk, D]`` with ``H % H_kv == 0``
    (each KV head serves ``H // H_kv`` consecutive query heads). Returns ``[B, H, Tq, D]`` in
    ``q.dtype``. Query rows that see no key at all come out as zeros.
    """
    B, H, Tq, D = q.shape
    H_kv = k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mask = attention_mask(q_pos, k_pos, window=window, sink_tokens=sink_tokens)  # (B|1, 1, Tq, Tk)
    qg = q.float().view(B, H_kv, H // H_kv, Tq, D)  # (B, H_kv, G, Tq, D)
    scores = torch.einsum("bhgqd,bhkd->bhgqk", qg, k.float()) * scale  # (B, H_kv, G, Tq, Tk)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhgqk,bhkd->bhgqd", probs, v.float())  # (B, H_kv, G, Tq, D)
    return out.reshape(B, H, Tq, D).to(q.dtype)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sink_tokens: int = 0,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same rule through ``torch.nn.functional.scaled_dot_product_attention`` (aten fast path).

    Numerically equal to :func:`attention` up to float rounding; used on CPU for speed.
    ``mask``: :func:`attention_mask` of the same arguments, when the caller already has it.
    """
    if mask is None:
        mask = attention_mask(
            q_pos, k_pos, window=window, sink_tokens=sink_tokens
        )  # (B|1, 1, Tq, Tk)
    # enable_gqa: each KV head serves its group of query heads without copying k and v
    gqa = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    # SDPA gives NaN for rows that see no key; the rule says such rows are zeros.
    return out.nan_to_num(0.0)


def single_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one query per row (``q``: ``[B, H, 1, D]``), for compiled graphs.

    ``mask``: :func:`attention_mask` (``[B|1, 1, 1, Tk]``). The same rule as :func:`attention`
    in ``q.dtype``: each KV head's group of query heads against its keys, and a row that sees
    no key comes out as zeros. Both products are written as broadcast multiply-and-sum, which
    inductor turns into loops fused with the mask and softmax; run eagerly, they materialise
    ``[B, H_kv, G, Tk, D]`` products (fine for a reference, slow for long caches).
    """
    B, H, _, D = q.shape
    H_kv, Tk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qg = q.reshape(B, H_kv, H // H_kv, 1, D)  # (B, H_kv, G, 1, D)
    scores = (qg * k.unsqueeze(2)).sum(-1) * scale  # (B, H_kv, G, Tk)
    scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, Tk), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs.unsqueeze(-1) * v.unsqueeze(2)).sum(-2).reshape(B, H, 1, D)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables for ``positions`` (``[B, T]`` or ``[T]``): ``cos, sin`` of ``[..., T, D/2]``.

    Angles are computed in float32 as ``position * inv_freq``; ``attention_scaling`` multiplies
    both tables (YaRN's magnitude correction; 1.0 otherwise).
    """
    angles = positions.float().unsqueeze(-1) * inv_freq.float()  # (..., T, D/2)
    return angles.cos() * attention_scaling, angles.sin() * attention_scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[B, H, T, D]``) by the tables ``cos, sin`` (``[B, T, D/2]`` or ``[T, D/2]``).

    Half-split layout (HF's ``rotate_half``): dimension ``i`` pairs with ``i + D/2``. Computed in
    float32, returned in ``x.dtype``.
    """
    half = x.shape[-1] // 2
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D/2)
    x1, x2 = x.float()[..., :half], x.float()[..., half:]  # (B, H, T, D/2) each
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, H, T, D)
    return out.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension, as Llama does it: normalise in float32, cast, then scale."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


# Quantized weight layouts, shared by the native CPU kernels (llm_kernels.quant) and the Triton
# ones. Every weight is for ``y = x @ W.T`` with ``W`` logically ``[N, K]`` (out, in).
#
# GGUF blocks, kept as in the file: ``uint8 [N, K // 32 * B]``, each row the bytes of its blocks.
#   Q8_0 (B = 34): fp16 d, 32 int8 q;                 value = q * d
#   Q4_0 (B = 18): fp16 d, 16 bytes of nibbles;       value = (q - 8) * d
#   Q4_1 (B = 20): fp16 d, fp16 m, 16 bytes;          value = q * d + m
# where byte j of a block's nibbles holds element j (low nibble) and element j + 16 (high).
# The project's own schemes:
#   int8: qweight int8 [N, K], scales float32 [N];    value = q * scale
#   q4 (group G of 32, 64 or 128): qweight uint8 [N, K // 2], byte j of a group's G / 2 bytes
#     holds element j (low nibble) and j + G / 2 (high); scales float16 [N, K // G], mins
#     float16 [N, K // G] or None. Symmetric: value = (q - 8) * scale; else q * scale + min.

QK = 32  # elements per GGUF block (Q8_0, Q4_0, Q4_1)
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}  # bytes per block of QK elements


def _gguf_blocks(blocks: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """``blocks`` ``uint8 [N, K/32*B]`` as ``[N, K/32, B]``, after checking the layout."""
    size = BLOCK_BYTES[kind]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2:
        raise ValueError(
            f"{kind}: blocks must be a 2-D uint8 tensor, got {blocks.dtype} {tuple(blocks.shape)}"
        )
    if k <= 0 or k % QK != 0:
        raise ValueError(f"{kind}: K must be a positive multiple of {QK}, got {k}")
    if blocks.shape[1] != k // QK * size:
        raise ValueError(
            f"{kind}: K={k} needs {k // QK * size} bytes per row, blocks have {blocks.shape[1]}"
        )
    return blocks.reshape(blocks.shape[0], k // QK, size)  # (N, K/32, B)


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two bytes per element (little-endian fp16) ``[..., 2]`` -> float32 ``[..., 1]``."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., G/2]`` -> ``uint8 [..., G]``: low nibbles (elements 0..G/2-1), then high."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


def dequantize_q8_0(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """GGUF Q8_0 blocks ``uint8 [N, K/32*34]`` -> float32 ``[N, K]`` (value = q * d).

    Bit-for-bit ``gguf.quants.dequantize``. Raises ``ValueError`` on a wrong dtype or size.
    """
    b = _gguf_blocks(blocks, k, "q8_0")  # (N, K/32, 34)
    d = _f16(b[..., :2])  # (N, K/32, 1)
    q = b[..., 2:].contiguous().view(torch.int8).float()  # (N, K/32, 32)
    return (q * d).reshape(b.shape[0], k)


def dequantize_q4_0(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """GGUF Q4_0 blocks ``uint8 [N, K/32*18]`` -> float32 ``[N, K]`` (value = (q - 8) * d).

    Bit-for-bit ``gguf.quants.dequantize``. Raises ``ValueError`` on a wrong dtype or size.
    """
    b = _gguf_blocks(blocks, k, "q4_0")  # (N, K/32, 18)
    d = _f16(b[..., :2])  # (N, K/32, 1)
    q = _nibbles(b[..., 2:]).float() - 8.0  # (N, K/32, 32)
    return (q * d).reshape(b.shape[0], k)


def dequantize_q4_1(blocks: torch.Tensor, k: int) -> torch.Tensor:
    """GGUF Q4_1 blocks ``uint8 [N, K/32*20]`` -> float32 ``[N, K]`` (value = q * d + m).

    Bit-for-bit ``gguf.quants.dequantize`` (a product, then a sum: no fused multiply-add).
    Raises ``ValueError`` on a wrong dtype or size.
    """
    b = _gguf_blocks(blocks, k, "q4_1")  # (N, K/32, 20)
    d, m = _f16(b[..., :2]), _f16(b[..., 2:4])  # (N, K/32, 1) each
    q = _nibbles(b[..., 4:]).float()  # (N, K/32, 32)
    return (q * d + m).reshape(b.shape[0], k)


# Q4_0 / Q4_1 with eight rows interleaved (the native kernel's formats 5 and 6, for CPUs: see
# quant_rows.cpp): rows 8g..8g+7 become, per block b, the eight rows' d (8 float16), for Q4_1
# their m (8 float16), then the packed bytes as four groups j of 32 bytes, group j the bytes
# 4j..4j+3 of each row's block in row order. Same size and shape as the GGUF blocks; N must be
# a multiple of 8. interleave8 and deinterleave8 are exact inverses.
INTERLEAVED = {"q4_0x8": "q4_0", "q4_1x8": "q4_1"}  # the layout -> the GGUF format it holds


def _x8_parts(kind: str) -> tuple[int, int]:
    """(bytes of scales and mins per row's block, bytes of packed values) for a 4-bit kind."""
    return (2, 16) if kind == "q4_0" else (4, 16)


def interleave8(blocks: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """GGUF ``kind`` (``"q4_0"`` or ``"q4_1"``) blocks ``uint8 [N, K/32*B]`` -> the same
    blocks with eight rows interleaved (``kind + "x8"``), a new contiguous tensor of the same
    shape. Raises ``ValueError`` on another kind, a wrong layout or N not a multiple of 8."""
    if kind not in ("q4_0", "q4_1"):
        raise ValueError(f"interleave8: only q4_0 and q4_1 blocks interleave, got {kind!r}")
    b = _gguf_blocks(blocks, k, kind)  # (N, nb, B)
    n, nb, size = b.shape
    if n % 8:
        raise ValueError(f"interleave8: {n} rows are not a multiple of 8")
    head, _ = _x8_parts(kind)
    g = b.reshape(n // 8, 8, nb, size).transpose(1, 2)  # (G, nb, 8, B)
    parts = [g[..., 0:2].reshape(n // 8, nb, 16)]  # the eight d
    if head == 4:
        parts.append(g[..., 2:4].reshape(n // 8, nb, 16))  # the eight m
    values = g[..., head:].reshape(n // 8, nb, 8, 4, 4).transpose(2, 3)  # (G, nb, j, row, 4)
    parts.append(values.reshape(n // 8, nb, 128))
    return torch.cat(parts, dim=-1).reshape(n, nb * size).contiguous()


def deinterleave8(blocks: torch.Tensor, k: int, layout: str) -> torch.Tensor:
    """The inverse of :func:`interleave8`: ``layout`` (``"q4_0x8"``, ``"q4_1x8"``) blocks back
    in GGUF order. Raises ``ValueError`` on a wrong layout."""
    if layout not in INTERLEAVED:
        raise ValueError(f"deinterleave8: unknown layout {layout!r}")
    kind = INTERLEAVED[layout]
    b = _gguf_blocks(blocks, k, kind)  # (N, nb, B): the same sizes, another order
    n, nb, size = b.shape
    if n % 8:
        raise ValueError(f"deinterleave8: {n} rows are not a multiple of 8")
    head, _ = _x8_parts(kind)
    g = b.reshape(n // 8, nb, 8 * size)  # (G, nb, 8B)
    parts = [g[..., 0:16].reshape(n // 8, nb, 8, 2)]
    if head == 4:
        parts.append(g[..., 16:32].reshape(n // 8, nb, 8, 2))
    values = g[..., 8 * head :].reshape(n // 8, nb, 4, 8, 4).transpose(2, 3)  # (G, nb, row, j, 4)
    parts.append(values.reshape(n // 8, nb, 8, 16))
    rows = torch.cat(parts, dim=-1)  # (G, nb, 8, B)
    return rows.transpose(1, 2).reshape(n, nb * size).contiguous()


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The project's int8 weights: ``qweight`` int8 ``[N, K]`` and ``scales`` float32 ``[N]``
    (symmetric per output channel) -> float32 ``[N, K]`` (value = q * scale).

    Raises ``ValueError`` on a wrong dtype or shape.
    """
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ValueError(
            f"int8: qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}"
        )
    if scales.shape != (qweight.shape[0],):
        raise ValueError(f"int8: scales must be [{qweight.shape[0]}], got {tuple(scales.shape)}")
    return qweight.float() * scales.float().unsqueeze(1)  # (N, K)


def dequantize_q4(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """The project's q4 weights -> float32 ``[N, K]``.

    ``qweight`` uint8 ``[N, K/2]`` (per group of ``group_size`` elements, byte j holds element
    j in its low nibble and j + G/2 in its high one), ``scales`` float16 ``[N, K/G]``, ``mins``
    float16 ``[N, K/G]`` or None. Symmetric (``mins`` None): value = (q - 8) * scale; with zero
    points: value = q * scale + min. Raises ``ValueError`` on a wrong dtype or shape.
    """
    if group_size not in (32, 64, 128):
        raise ValueError(f"q4: group_size must be 32, 64 or 128, got {group_size}")
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(
            f"q4: qweight must be a 2-D uint8 tensor, got {qweight.dtype} {tuple(qweight.shape)}"
        )
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if k % group_size != 0:
        raise ValueError(f"q4: K={k} is not a multiple of group_size={group_size}")
    groups = k // group_size
    for name, t in (("scales", scales), ("mins", mins)):
        if t is not None and t.shape != (n, groups):
            raise ValueError(f"q4: {name} must be [{n}, {groups}], got {tuple(t.shape)}")
    q = _nibbles(qweight.reshape(n, groups, group_size // 2)).float()  # (N, K/G, G)
    s = scales.float().unsqueeze(-1)  # (N, K/G, 1)
    out = (q - 8.0) * s if mins is None else q * s + mins.float().unsqueeze(-1)  # (N, K/G, G)
    return out.reshape(n, k)
