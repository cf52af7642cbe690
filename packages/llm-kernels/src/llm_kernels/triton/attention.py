"""Flash attention under the position rule: causal + sliding window + sink tokens, GQA.

One kernel serves prefill (many queries over a contiguous block of keys) and decode (a few
queries over a position-tagged ring-buffer cache). A program owns one KV head of one batch row
and a block of ``BLOCK_M`` rows of that head's query group, ordered query-major
(row = t * G + g), so a decode step's G query heads share every key and value tile it loads
(GQA without repeating K/V) and a prefill block spans few positions. Keys are visited in
tiles with an online softmax, masked by their stored positions, never by slot order.

Tiles that lie wholly outside the window are never loaded. When a batch row's key positions
are sorted (empty slots, position < 0, at the end), which prefill and a static cache give, the
program binary-searches its key range: the sink slots, then the window
``(min_q - window, max_q]``, so its work is O(W) keys per query block and the whole prefill
O(N x W). Otherwise (a ring buffer that wrapped) it looks at every tile's positions and skips
the tiles none of its queries sees.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from llm_kernels.triton._jit import dot_dtype, interpreting, kernel

_EMPTY = torch.iinfo(torch.int64).max  # an empty slot sorts after every position


@kernel
def _attention_fwd(
    # pointers
    Q,
    K,
    V,
    Out,
    QPos,
    KPos,
    Sorted,
    # strides
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_qpb,
    stride_qpt,
    stride_kpb,
    stride_kpt,
    stride_sb,
    # sizes and rule
    H_kv,
    Tq,
    Tk,
    G,
    D,
    window,
    sink_tokens,
    qk_scale,  # softmax scale times log2(e): scores are exponentiated with exp2
    # meta-parameters
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H_kv
    kvh = pid_bh % H_kv

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) row = t * G + g
    row_ok = rows < G * Tq
    t = rows // G
    head = kvh * G + rows % G
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    q_ptrs = Q + b * stride_qb + head[:, None] * stride_qh + t[:, None] * stride_qt
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptrs + d[None, :] * stride_qd, mask=q_mask, other=0.0).to(DOT_DTYPE)
    p_q = tl.load(QPos + b * stride_qpb + t * stride_qpt, mask=row_ok, other=-1)  # (BLOCK_M,)
    q_lo = tl.min(tl.where(row_ok, p_q, 1 << 62), 0)
    q_hi = tl.max(p_q, 0)

    # the key range to visit: [0, sink_end) and [win_lo, hi) in slots
    kpos = KPos + b * stride_kpb
    sink_end = 0
    win_lo = 0
    hi = Tk
    if tl.load(Sorted + b * stride_sb) != 0:
        # hi = the first slot whose position is past every query (empty slots count as +inf)
        lo_s = 0
        hi_s = Tk
        while lo_s < hi_s:
            mid = (lo_s + hi_s) // 2
            p = tl.load(kpos + mid * stride_kpt)
            right = (p >= 0) & (p <= q_hi)
            lo_s = tl.where(right, mid + 1, lo_s)
            hi_s = tl.where(right, hi_s, mid)
        hi = lo_s
        if HAS_WINDOW:
            # win_lo = the first slot inside the earliest query's window
            lo_s = 0
            hi_s = hi
            while lo_s < hi_s:
                mid = (lo_s + hi_s) // 2
                p = tl.load(kpos + mid * stride_kpt)
                right = (p >= 0) & (q_lo - p >= window)
                lo_s = tl.where(right, mid + 1, lo_s)
                hi_s = tl.where(right, hi_s, mid)
            win_lo = lo_s
            # sink_end = the first slot that is not a sink
            lo_s = 0
            hi_s = win_lo
            while lo_s < hi_s:
                mid = (lo_s + hi_s) // 2
                p = tl.load(kpos + mid * stride_kpt)
                right = (p >= 0) & (p < sink_tokens)
                lo_s = tl.where(right, mid + 1, lo_s)
                hi_s = tl.where(right, hi_s, mid)
            sink_end = lo_s
    n_sink_tiles = tl.cdiv(sink_end, BLOCK_N)
    win_start = tl.maximum(n_sink_tiles * BLOCK_N, (win_lo // BLOCK_N) * BLOCK_N)
    n_tiles = n_sink_tiles + tl.cdiv(tl.maximum(hi - win_start, 0), BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    for i in range(0, n_tiles):
        start = tl.where(i < n_sink_tiles, i * BLOCK_N, win_start + (i - n_sink_tiles) * BLOCK_N)
        n = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) slots
        n_ok = n < Tk
        p_k = tl.load(kpos + n * stride_kpt, mask=n_ok, other=-1)  # (BLOCK_N,)
        seen = (p_k[None, :] >= 0) & (p_k[None, :] <= p_q[:, None])  # (BLOCK_M, BLOCK_N)
        if HAS_WINDOW:
            near = (p_q[:, None] - p_k[None, :]) < window
            seen = seen & (near | (p_k[None, :] < sink_tokens))
        seen = seen & row_ok[:, None]
        if tl.max(tl.max(seen.to(tl.int32), 1), 0) > 0:
            kv_ok = n_ok[:, None] & d_ok[None, :]
            k_ptrs = k_base + n[:, None] * stride_kt + d[None, :] * stride_kd
            k = tl.load(k_ptrs, mask=kv_ok, other=0.0).to(DOT_DTYPE)  # (BLOCK_N, BLOCK_D)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s - m_use[:, None])  # (BLOCK_M, BLOCK_N), 0 where unseen
            l_i = l_i * alpha + tl.sum(p, 1)
            v_ptrs = v_base + n[:, None] * stride_vt + d[None, :] * stride_vd
            v = tl.load(v_ptrs, mask=kv_ok, other=0.0).to(DOT_DTYPE)  # (BLOCK_N, BLOCK_D)
            pv = tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row that sees no key gives zeros
    o_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + t[:, None] * stride_ot
    o_ptrs = o_ptrs + d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _blocks(rows: int, head_dim: int) -> tuple[int, int, int, int]:
    """``BLOCK_M, BLOCK_N, num_warps, num_stages`` for ``rows`` query rows per KV head."""
    if interpreting():
        return 16, 16, 1, 1  # the interpreter runs numpy per tile: small tiles, few wasted rows
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64 if rows <= 64 else 128
    block_n = 64 if head_dim <= 128 else 32
    num_warps = 8 if block_m == 128 or head_dim > 128 else 4
    return block_m, block_n, num_warps, 2 if head_dim > 128 else 3


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
    """Attention under the position rule, as :func:`llm_kernels.reference.attention`.

    ``q``: ``[B, H, Tq, D]``; ``k``, ``v``: ``[B, H_kv, Tk, D]`` (any strides);
    ``q_pos``: ``[B|1, Tq]`` or ``[Tq]``; ``k_pos``: ``[B|1, Tk]`` or ``[Tk]``, negative for an
    empty slot. Returns ``[B, H, Tq, D]`` in ``q.dtype``, accumulated in float32; a query
    that sees no key gets zeros. Forward only (no autograd). Raises ``ValueError`` on a head
    dim outside 16..256 or mixed dtypes.
    """
    B, H, Tq, D = q.shape
    H_kv, Tk = k.shape[1], k.shape[2]
    if not 16 <= D <= 256:
        raise ValueError(f"attention (Triton): head_dim {D} is outside 16..256")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention (Triton): dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    G = H // H_kv
    q_pos = q_pos.reshape(-1, Tq) if q_pos.dim() == 1 else q_pos  # (B|1, Tq)
    k_pos = k_pos.reshape(-1, Tk) if k_pos.dim() == 1 else k_pos  # (B|1, Tk)
    effective = k_pos.masked_fill(k_pos < 0, _EMPTY)  # (B|1, Tk)
    ordered = (effective[:, 1:] >= effective[:, :-1]).all(-1).to(torch.int32)  # (B|1,)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Tq, D)
    if out.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    block_m, block_n, num_warps, num_stages = _blocks(G * Tq, D)
    grid = (triton.cdiv(G * Tq, block_m), B * H_kv)
    _attention_fwd[grid](
        q, k, v, out, q_pos, k_pos, ordered,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        q_pos.stride(0) if q_pos.shape[0] > 1 else 0, q_pos.stride(1),
        k_pos.stride(0) if k_pos.shape[0] > 1 else 0, k_pos.stride(1),
        1 if ordered.shape[0] > 1 else 0,
        H_kv, Tq, Tk, G, D,
        window if window is not None else 0,
        sink_tokens,
        scale * math.log2(math.e),
        HAS_WINDOW=window is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_DTYPE=dot_dtype(q.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    return out
