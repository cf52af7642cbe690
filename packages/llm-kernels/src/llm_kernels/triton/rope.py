"""Rotary position embedding, half-split layout, q and k rotated in one launch.

A program owns one (batch row, position): it loads that position's ``cos``/``sin`` once and
rotates every query head and every key head there, so the tables are read once for both.
The tables are whatever :func:`llm_kernels.reference.rope_cos_sin` made of llm-core's
frequencies (plain, NTK, dynamic NTK, linear, YaRN with its magnitude factor folded in), so
the kernel needs no knowledge of the scaling. The backward pass is the inverse rotation:
the same kernel with ``sin`` negated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton._jit import interpreting, kernel


@kernel
def _rope_fwd(
    # pointers
    Q,
    K,
    QOut,
    KOut,
    Cos,
    Sin,
    # strides
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_qob,
    stride_qoh,
    stride_qot,
    stride_qod,
    stride_kob,
    stride_koh,
    stride_kot,
    stride_kod,
    stride_cb,
    stride_ct,
    stride_cf,
    stride_sb,
    stride_st,
    stride_sf,
    # sizes
    T,
    H,
    H_kv,
    HALF,
    # meta-parameters
    HAS_K: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    f = tl.arange(0, BLOCK_F)  # (BLOCK_F,) frequency index
    f_ok = f < HALF
    cos = tl.load(Cos + b * stride_cb + t * stride_ct + f * stride_cf, mask=f_ok, other=0.0)
    sin = tl.load(Sin + b * stride_sb + t * stride_st + f * stride_sf, mask=f_ok, other=0.0)
    cos = cos.to(tl.float32)[None, :]  # (1, BLOCK_F)
    sin = sin.to(tl.float32)[None, :]
    if BACKWARD:
        sin = -sin  # the inverse rotation
    hb = tl.arange(0, BLOCK_H)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + hb  # (BLOCK_H,)
        ok = (h < H)[:, None] & f_ok[None, :]
        src = Q + b * stride_qb + h[:, None] * stride_qh + t * stride_qt + f[None, :] * stride_qd
        x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_F)
        x2 = tl.load(src + HALF * stride_qd, mask=ok, other=0.0).to(tl.float32)
        dst = QOut + b * stride_qob + h[:, None] * stride_qoh + t * stride_qot
        dst = dst + f[None, :] * stride_qod
        tl.store(dst, (x1 * cos - x2 * sin).to(QOut.dtype.element_ty), mask=ok)
        tl.store(dst + HALF * stride_qod, (x2 * cos + x1 * sin).to(QOut.dtype.element_ty), mask=ok)
    if HAS_K:
        for h0 in range(0, H_kv, BLOCK_H):
            h = h0 + hb
            ok = (h < H_kv)[:, None] & f_ok[None, :]
            src = K + b * stride_kb + h[:, None] * stride_kh + t * stride_kt
            src = src + f[None, :] * stride_kd
            x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_F)
            x2 = tl.load(src + HALF * stride_kd, mask=ok, other=0.0).to(tl.float32)
            dst = KOut + b * stride_kob + h[:, None] * stride_koh + t * stride_kot
            dst = dst + f[None, :] * stride_kod
            tl.store(dst, (x1 * cos - x2 * sin).to(KOut.dtype.element_ty), mask=ok)
            out2 = (x2 * cos + x1 * sin).to(KOut.dtype.element_ty)
            tl.store(dst + HALF * stride_kod, out2, mask=ok)


def _tables(table: torch.Tensor, T: int) -> tuple[torch.Tensor, int, int, int]:
    """``table`` (``[T, D/2]`` or ``[B|1, T, D/2]``) and its batch, position, frequency strides."""
    if table.dim() == 2:
        return table, 0, table.stride(0), table.stride(1)
    return table, table.stride(0) if table.shape[0] > 1 else 0, table.stride(1), table.stride(2)


def _launch(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    backward: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, H, T, D = q.shape
    q_out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, T, D)
    k_out = None if k is None else torch.empty_like(k, memory_format=torch.contiguous_format)
    if q.numel() == 0:
        return q_out, k_out
    kk, ko = (q, q_out) if k is None else (k, k_out)
    cos, *c_strides = _tables(cos, T)
    sin, *s_strides = _tables(sin, T)
    heads = max(H, kk.shape[1])
    block_h = min(triton.next_power_of_2(heads), 4 if interpreting() else 16)
    _rope_fwd[(B * T,)](
        q, kk, q_out, ko, cos, sin,
        *q.stride(), *kk.stride(), *q_out.stride(), *ko.stride(), *c_strides, *s_strides,
        T, H, kk.shape[1], D // 2,
        HAS_K=k is not None,
        BACKWARD=backward,
        BLOCK_H=block_h,
        BLOCK_F=triton.next_power_of_2(D // 2),
        num_warps=4,
    )  # fmt: skip
    return q_out, k_out


class _RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.has_k = k is not None
        return _launch(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        # the rotation is orthogonal: its gradient is the inverse rotation of the output grads
        cos, sin = ctx.saved_tensors
        dq, dk = _launch(grad_q, grad_k if ctx.has_k else None, cos, sin, backward=True)
        return dq, dk, None, None


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(
            f"rope (Triton): {name} must be [B, H, T, D] with D even, got {tuple(x.shape)}"
        )
    if cos.shape != sin.shape or cos.shape[-1] * 2 != x.shape[-1] or cos.shape[-2] != x.shape[2]:
        raise ValueError(
            f"rope (Triton): tables {tuple(cos.shape)}/{tuple(sin.shape)} do not fit {name} "
            f"{tuple(x.shape)} (want [T, D/2] or [B, T, D/2])"
        )
    if cos.dim() == 3 and cos.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"rope (Triton): tables for {cos.shape[0]} rows, {name} has {x.shape[0]}")


def apply_rope_qk(
    q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate ``q`` (``[B, H, T, D]``) and ``k`` (``[B, H_kv, T, D]``, or ``None``) in one launch.

    ``cos``, ``sin``: ``[T, D/2]`` or ``[B|1, T, D/2]`` (any float dtype; used in float32).
    Half-split layout, as :func:`llm_kernels.reference.apply_rope`; computed in float32 and
    returned in each input's dtype. Differentiable in ``q`` and ``k`` (the tables get no
    gradient). Raises ``ValueError`` when the shapes do not fit.
    """
    _check(q, cos, sin, "q")
    if k is not None:
        _check(k, cos, sin, "k")
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"rope (Triton): q {tuple(q.shape)} and k {tuple(k.shape)} differ")
    return _RopeFunction.apply(q, k, cos, sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope_qk` of one tensor."""
    return apply_rope_qk(x, None, cos, sin)[0]
