"""RMSNorm forward and backward, with an optional fused residual add, one row per program.

Llama's arithmetic: ``h = x + residual`` (in the input dtype), then ``n = h * rsqrt(mean(h^2)
+ eps)`` in float32, rounded to the input dtype, times ``weight`` in the promoted dtype of the
two. The backward pass recomputes ``n`` from the saved input and per-row ``rstd``; each program
of the backward walks a strided set of rows and sums its share of the weight gradient, and
torch adds up those partial sums (no atomics, deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton._jit import interpreting, kernel


@kernel
def _rms_norm_fwd(
    # pointers
    X,
    Res,
    W,
    Y,
    HOut,
    Rstd,
    # strides (rows are contiguous)
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    # sizes
    N,
    eps,
    # meta-parameters
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0)  # (BLOCK_N,)
    if HAS_RESIDUAL:
        r = tl.load(Res + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(HOut.dtype.element_ty)
        tl.store(HOut + row * stride_h + cols, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / N + eps)
    tl.store(Rstd + row, rstd)
    n = (xf * rstd).to(X.dtype.element_ty).to(tl.float32)  # Llama rounds before the weight
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (n * w).to(Y.dtype.element_ty), mask=ok)


@kernel
def _rms_norm_bwd(
    # pointers
    DY,
    X,
    W,
    Rstd,
    DHOut,
    DX,
    DWPartial,
    # strides
    stride_dy,
    stride_x,
    stride_dh,
    stride_dx,
    # sizes
    M,
    N,
    # meta-parameters
    HAS_DH: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)  # (BLOCK_N,)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    # this program's rows: pid, pid + programs, ...; pointers advance in 64 bits
    dy_ptr = DY + pid * stride_dy
    x_ptr = X + pid * stride_x
    dh_ptr = DHOut + pid * stride_dh
    dx_ptr = DX + pid * stride_dx
    rstd_ptr = Rstd + pid
    for _ in range(pid, M, programs):
        xf = tl.load(x_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr)
        n = xf * rstd
        dy = tl.load(dy_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
        dn = dy * w
        dx = rstd * (dn - n * (tl.sum(dn * n, 0) / N))
        if HAS_DH:
            dx += tl.load(dh_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + cols, dx.to(DX.dtype.element_ty), mask=ok)
        dy_ptr += programs * stride_dy
        x_ptr += programs * stride_x
        dh_ptr += programs * stride_dh
        dx_ptr += programs * stride_dx
        rstd_ptr += programs
    tl.store(DWPartial + pid * N + cols, dw, mask=ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, N]`` with contiguous rows (a view where possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(x, residual, weight, eps):
    N = x.shape[-1]
    x2 = _rows(x)  # (M, N)
    M = x2.shape[0]
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty(M, N, dtype=out_dtype, device=x.device)  # (M, N)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)  # (M,)
    r2 = _rows(residual) if residual is not None else x2
    h = torch.empty_like(x2) if residual is not None else x2  # (M, N) the sum x + residual
    if M:
        _rms_norm_fwd[(M,)](
            x2, r2, weight, y, h, rstd,
            x2.stride(0), r2.stride(0), y.stride(0), h.stride(0),
            N, eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK_N=triton.next_power_of_2(N),
            num_warps=_warps(N),
        )  # fmt: skip
    return y, h, rstd


def _warps(N: int) -> int:
    return 1 if interpreting() else min(max(triton.next_power_of_2(N) // 256, 1), 16)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        y, h, rstd = _forward(x, residual, weight, eps)
        ctx.save_for_backward(h, weight, rstd)
        ctx.shape, ctx.has_residual = x.shape, residual is not None
        y = y.view(*x.shape[:-1], x.shape[-1])
        return (y, h.view(x.shape)) if residual is not None else (y, None)

    @staticmethod
    def backward(ctx, dy, dh):
        h, weight, rstd = ctx.saved_tensors
        M, N = h.shape
        dy2 = _rows(dy)
        dh2 = _rows(dh) if ctx.has_residual and dh is not None else dy2
        dx = torch.empty(M, N, dtype=h.dtype, device=h.device)  # (M, N)
        programs = max(1, min(M, _sm_count(h.device) * 4 if h.is_cuda else 4))
        dw_partial = torch.empty(programs, N, dtype=torch.float32, device=h.device)
        if M:
            _rms_norm_bwd[(programs,)](
                dy2, h, weight, rstd, dh2, dx, dw_partial,
                dy2.stride(0), h.stride(0), dh2.stride(0), dx.stride(0),
                M, N,
                HAS_DH=ctx.has_residual and dh is not None,
                BLOCK_N=triton.next_power_of_2(N),
                num_warps=_warps(N),
            )  # fmt: skip
        dw = dw_partial.sum(0).to(weight.dtype) if M else torch.zeros_like(weight)
        dx = dx.view(ctx.shape)
        return dx, (dx if ctx.has_residual else None), dw, None


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm (Triton): weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}"
        )
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"rms_norm (Triton): residual {tuple(residual.shape)} {residual.dtype} does not "
            f"match x {tuple(x.shape)} {x.dtype}"
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension, as :func:`llm_kernels.reference.rms_norm`.

    ``x``: ``[..., N]``; ``weight``: ``[N]``. Returns ``[..., N]`` in the promoted dtype of
    ``x`` and ``weight`` (Llama's). Differentiable in ``x`` and ``weight``. Raises
    ``ValueError`` when ``weight`` does not fit.
    """
    _check(x, weight, None)
    return _RMSNormFunction.apply(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual`` and ``rms_norm(h, weight, eps)`` in one pass: returns
    ``(normed, h)``, both ``[..., N]`` (``h`` in ``x.dtype``). Differentiable in all three.
    Raises ``ValueError`` when the shapes or dtypes do not fit."""
    _check(x, weight, residual)
    return _RMSNormFunction.apply(x, residual, weight, eps)
