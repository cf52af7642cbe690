"""Products with quantized weights, ``y = x @ W.T``, on the layouts of :mod:`llm_kernels.reference`.

One tiled kernel (``_dequant_matmul``) covers every weight-only format: the project's ``int8``
(W8A16: per-output-channel scales applied once after the K loop) and ``q4`` (W4A16: groups of
32/64/128, symmetric or with mins), and GGUF's Q8_0 / Q4_0 / Q4_1 blocks read in place (the
fp16 ``d`` / ``m`` assembled from the block's bytes). A tile of ``BLOCK_K`` (a multiple of the
group) x ``BLOCK_N`` weights is unpacked and scaled in registers, in the activations' dtype,
and fed to ``tl.dot`` with float32 accumulation; the weight bytes are read once per tile of
``BLOCK_M`` rows. Element ``j`` of a group of ``G`` 4-bit values sits in byte ``j % (G/2)``,
low nibble for ``j < G/2`` (GGUF's order, generalised).

W8A8 (``_int8_matmul``): activations quantized per token (symmetric, round half to even, one
float32 scale a row) by ``_quantize_rows``, an int8 x int8 product with int32 accumulation,
then both scales.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton._jit import dot_dtype, interpreting, kernel

# format codes of _dequant_matmul (constexpr globals: a kernel may read only those)
INT8, Q4, Q8_0, Q4_0, Q4_1 = (tl.constexpr(code) for code in range(5))
_GGUF = {
    "q8_0": (Q8_0.value, 34, 2),
    "q4_0": (Q4_0.value, 18, 2),
    "q4_1": (Q4_1.value, 20, 4),
}  # code, bytes, header


@kernel
def _dequant_matmul(
    # pointers
    X,
    W,
    Scales,
    Mins,
    Bias,
    Y,
    # sizes
    M,
    N,
    K,
    # strides
    stride_xm,
    stride_xk,
    stride_wn,
    stride_sn,
    stride_ym,
    # meta-parameters
    FORMAT: tl.constexpr,
    GROUP: tl.constexpr,  # elements per scale (int8: unused)
    GROUP_BYTES: tl.constexpr,  # bytes per group in a row of W (GGUF: the block, header included)
    HEADER: tl.constexpr,  # bytes before a GGUF block's quants (d, or d and m)
    HAS_MIN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # (BLOCK_N,)
    m_ok = m < M
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    gg = tl.arange(0, BLOCK_K // GROUP)  # (BLOCK_K // GROUP,) groups in a tile
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_ok = k < K
        x = tl.load(
            X + m[:, None] * stride_xm + k[None, :] * stride_xk,
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        ).to(DOT_DTYPE)  # (BLOCK_M, BLOCK_K)
        w_ok = k_ok[:, None] & n_ok[None, :]
        row = W + n[None, :] * stride_wn  # (1, BLOCK_N) byte pointers
        if FORMAT == INT8:
            q = tl.load(row + k[:, None], mask=w_ok, other=0)  # (BLOCK_K, BLOCK_N) int8
            w = q.to(DOT_DTYPE)  # exact: the scale comes after the K loop
        else:
            j = k % GROUP  # (BLOCK_K,) index inside the group
            if FORMAT == Q8_0:
                byte = (k // GROUP) * GROUP_BYTES + HEADER + j
                raw = tl.load(row + byte[:, None], mask=w_ok, other=0)
                q = raw.to(tl.int8, bitcast=True).to(tl.float32)
            else:
                byte = (k // GROUP) * GROUP_BYTES + HEADER + j % (GROUP // 2)
                raw = tl.load(row + byte[:, None], mask=w_ok, other=0)  # (BLOCK_K, BLOCK_N) uint8
                shift = (j // (GROUP // 2)) * 4  # low nibble first, then high
                q = ((raw >> shift[:, None].to(tl.uint8)) & 0xF).to(tl.float32)
                if not HAS_MIN:
                    q = q - 8.0
            g = k0 // GROUP + gg  # (BLOCK_K // GROUP,) group index along K
            s_ok = (g < K // GROUP)[:, None] & n_ok[None, :]
            if FORMAT == Q4:
                s_ptr = Scales + n[None, :] * stride_sn + g[:, None]
                s = tl.load(s_ptr, mask=s_ok, other=0.0).to(
                    tl.float32
                )  # (BLOCK_K // GROUP, BLOCK_N)
                if HAS_MIN:
                    mn = tl.load(Mins + n[None, :] * stride_sn + g[:, None], mask=s_ok, other=0.0)
                    mn = mn.to(tl.float32)
            else:
                d_ptr = row + g[:, None] * GROUP_BYTES  # the block's first byte
                lo = tl.load(d_ptr, mask=s_ok, other=0).to(tl.uint16)
                hi = tl.load(d_ptr + 1, mask=s_ok, other=0).to(tl.uint16)
                s = (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)
                if HAS_MIN:
                    lo = tl.load(d_ptr + 2, mask=s_ok, other=0).to(tl.uint16)
                    hi = tl.load(d_ptr + 3, mask=s_ok, other=0).to(tl.uint16)
                    mn = (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)
            q3 = tl.reshape(q, (BLOCK_K // GROUP, GROUP, BLOCK_N))
            w3 = q3 * s[:, None, :]
            if HAS_MIN:
                w3 = w3 + mn[:, None, :]
            w = tl.reshape(w3, (BLOCK_K, BLOCK_N)).to(DOT_DTYPE)  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    if FORMAT == INT8:
        acc = acc * tl.load(Scales + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(Bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptr = Y + m[:, None].to(tl.int64) * stride_ym + n[None, :]
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@kernel
def _quantize_rows(
    X,
    Q,
    S,
    stride_x,
    K,
    BLOCK_K: tl.constexpr,
):
    """Per-token symmetric int8: ``s = max|x| / 127``, ``q = round_half_even(x / s)``."""
    row = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    ok = k < K
    x = tl.load(X + row * stride_x + k, mask=ok, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), 0)
    s = tl.where(amax > 0, amax / 127.0, 1.0)
    v = x / s
    r = tl.floor(v + 0.5)
    tie_odd = ((r - v) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0)
    r = tl.where(tie_odd, r - 1.0, r)  # half to even, as torch.round
    tl.store(Q + row * K + k, r.to(tl.int8), mask=ok)
    tl.store(S + row, s)


@kernel
def _int8_matmul(
    XQ,
    XS,
    W,
    WS,
    Bias,
    Y,
    M,
    N,
    K,
    stride_wn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    m_ok = m < M
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_ok = k < K
        xq = tl.load(XQ + m[:, None] * K + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
        wq = tl.load(W + n[None, :] * stride_wn + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                     other=0)  # fmt: skip
        acc = tl.dot(xq, wq, acc, out_dtype=tl.int32)  # (BLOCK_M, BLOCK_N) exact
    xs = tl.load(XS + m, mask=m_ok, other=0.0)
    ws = tl.load(WS + n, mask=n_ok, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(Bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + m[:, None] * stride_ym + n[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])  # fmt: skip


def _tiles(M: int, group: int) -> tuple[int, int, int, int, int]:
    """``BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages`` for ``M`` rows."""
    if interpreting():
        return 16, 16, max(group, 32), 1, 1
    block_m = 16 if M <= 16 else 32 if M <= 32 else 64
    block_n = 64 if M <= 16 else 128
    block_k = max(group, 128 if M <= 16 else 64)
    return block_m, block_n, block_k, 4, 4 if M <= 16 else 3


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (``[M, K]``) as int8 ``[M, K]`` and float32 scales ``[M]``: per row, symmetric,
    ``scale = max|x| / 127`` (1 for a zero row), values rounded half to even."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    s = torch.empty(M, dtype=torch.float32, device=x.device)
    if M:
        _quantize_rows[(M,)](x, q, s, x.stride(0), K, BLOCK_K=triton.next_power_of_2(K),
                             num_warps=1 if interpreting() else 4)  # fmt: skip
    return q, s


def quant_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    format: str,
    *,
    scales: torch.Tensor | None = None,
    mins: torch.Tensor | None = None,
    group_size: int = 32,
    bias: torch.Tensor | None = None,
    int8_activations: bool = False,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` (``[N, K]``) in ``format`` (``"int8"``, ``"q4"``,
    ``"q8_0"``, ``"q4_0"``, ``"q4_1"``; layouts in :mod:`llm_kernels.reference`).

    ``x``: ``[..., K]`` in float16, bfloat16 or float32; returns ``[..., N]`` in ``x.dtype``.
    Weight-only formats dequantize in the activations' dtype and accumulate in float32
    (W8A16, W4A16). ``int8_activations`` with ``"int8"`` runs W8A8 instead: per-token int8
    activations and int32 accumulation. Shapes are checked by the caller
    (:func:`llm_kernels.quant.quant_linear`); raises ``ValueError`` on an unknown format, or
    ``int8_activations`` with another format.
    """
    K = x.shape[-1]
    x2 = x.reshape(-1, K)  # (M, K)
    M, N = x2.shape[0], qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)  # (M, N)
    if M == 0 or N == 0:
        return y.view(*x.shape[:-1], N)
    if int8_activations:
        if format != "int8":
            raise ValueError(f"int8 activations (W8A8) need the int8 format, not {format!r}")
        xq, xs = quantize_per_token(x2)
        bm, bn, bk, warps, stages = _tiles(M, 32)
        grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
        _int8_matmul[grid](
            xq, xs, qweight, scales, bias if bias is not None else xs, y,
            M, N, K, qweight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return y.view(*x.shape[:-1], N)
    if format == "int8":
        code, group, group_bytes, header = INT8.value, 1, 1, 0
    elif format == "q4":
        code, group, group_bytes, header = Q4.value, group_size, group_size // 2, 0
    elif format in _GGUF:
        code, group_bytes, header = _GGUF[format]
        group = 32
    else:
        raise ValueError(f"unknown quantized format {format!r}")
    bm, bn, bk, warps, stages = _tiles(M, max(group, 16))
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    dummy = qweight  # an unused pointer argument
    _dequant_matmul[grid](
        x2, qweight,
        scales if scales is not None else dummy,
        mins if mins is not None else dummy,
        bias if bias is not None else dummy,
        y,
        M, N, K,
        x2.stride(0), x2.stride(1), qweight.stride(0),
        scales.stride(0) if (scales is not None and scales.dim() == 2) else 0,
        y.stride(0),
        FORMAT=code,
        GROUP=group if code != INT8.value else bk,
        GROUP_BYTES=group_bytes,
        HEADER=header,
        HAS_MIN=(mins is not None) or code == Q4_1.value,
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        DOT_DTYPE=dot_dtype(x.dtype),
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return y.view(*x.shape[:-1], N)
