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
