"""The one dispatch point: every op that model code calls, routed to an implementation.

Triton kernels (:mod:`llm_kernels.triton`) run on CUDA tensors, and on CPU tensors when
``TRITON_INTERPRET=1`` is set at call time (Triton's interpreter: slow, for tests), outside
``torch.compile`` graphs (inductor writes its own kernels there); otherwise the torch reference
or an aten fast path runs. The signatures
here are the contract: implementations behind them may change, callers never need to.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import torch.nn.functional as F

from llm_kernels import native, reference

try:  # triton is a Linux-only dependency; elsewhere every op runs its torch path
    from llm_kernels import triton as triton_ops
except ImportError:
    triton_ops = None


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
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention under the position rule; see :func:`llm_kernels.reference.attention`.

    ``q``: ``[B, H, Tq, D]``; ``k``, ``v``: ``[B, H_kv, Tk, D]``; ``q_pos``: ``[B, Tq]`` or
    ``[Tq]``; ``k_pos``: ``[B, Tk]`` or ``[Tk]`` (negative = empty slot). ``mask``, if given,
    must be :func:`~llm_kernels.reference.attention_mask` of these positions, window and sinks:
    a model computes it once per forward and hands it to every layer. Raises ``ValueError`` on
    inconsistent shapes.

    Up to :data:`~llm_kernels.native.MAX_ROWS` queries per row of float32 on CPU (decode) run
    the native kernel ``torch.ops.llm_kernels.attend_rows`` when it is available (see
    :mod:`llm_kernels.native`), unless gradients are needed; longer queries (prefill) run
    torch's SDPA. Where Triton runs (see the module docstring) and no gradient is needed, the
    flash kernel :func:`llm_kernels.triton.attention` takes every shape instead (``mask`` is
    then unused: the kernel masks by the positions).
    """
    _check_attention_shapes(q, k, v, q_pos, k_pos)
    if _triton_runs(q, k, v, q_pos, k_pos) and not _needs_grad(q, k, v):
        return triton_ops.attention(
            q, k, v, q_pos, k_pos, window=window, sink_tokens=sink_tokens, scale=scale
        )
    if _attend_kernel_applies(q, k, v) and _native_available():
        if mask is None:
            mask = reference.attention_mask(q_pos, k_pos, window=window, sink_tokens=sink_tokens)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return torch.ops.llm_kernels.attend_rows.default(q, k, v, mask, scale)
    if q.shape[2] == 1 and torch.compiler.is_compiling():
        # One query per row (decode) inside a compiled graph: loops that inductor fuses with
        # the mask and softmax, cheaper here than the flash kernel's tiling.
        if mask is None:
            mask = reference.attention_mask(q_pos, k_pos, window=window, sink_tokens=sink_tokens)
        return reference.single_query_attention(q, k, v, mask, scale=scale)
    return reference.sdpa_attention(
        q, k, v, q_pos, k_pos, window=window, sink_tokens=sink_tokens, scale=scale, mask=mask
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, half-split layout; see :func:`llm_kernels.reference.apply_rope`.

    Where Triton runs, :func:`llm_kernels.triton.apply_rope` (differentiable). Raises
    ``ValueError`` when the tables do not fit ``x``.
    """
    if cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(
            f"apply_rope: tables have {cos.shape[-1]} frequencies, x has head_dim {x.shape[-1]}"
        )
    if _triton_runs(x, cos, sin):
        return triton_ops.apply_rope(x, cos, sin)
    return reference.apply_rope(x, cos, sin)


def apply_rope_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_rope` of queries ``[B, H, T, D]`` and keys ``[B, H_kv, T, D]`` at the same
    positions: one fused launch where Triton runs (each table read once for both), two
    reference rotations otherwise. Raises ``ValueError`` when the tables do not fit."""
    for name, x in (("q", q), ("k", k)):
        if cos.shape[-1] * 2 != x.shape[-1]:
            raise ValueError(
                f"apply_rope_qk: tables have {cos.shape[-1]} frequencies, {name} has head_dim "
                f"{x.shape[-1]}"
            )
    if _triton_runs(q, k, cos, sin):
        q_out, k_out = triton_ops.apply_rope_qk(q, k, cos, sin)
        return q_out, k_out
    return reference.apply_rope(q, cos, sin), reference.apply_rope(k, cos, sin)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension; see :func:`llm_kernels.reference.rms_norm`.

    Where Triton runs, :func:`llm_kernels.triton.rms_norm` (forward and backward kernels).
    """
    if _triton_runs(x, weight):
        return triton_ops.rms_norm(x, weight, eps)
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        # aten's own op: the same float32 arithmetic in one call instead of seven
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return reference.rms_norm(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm block's ``h = x + residual`` then ``rms_norm(h, weight, eps)``: returns
    ``(normed, h)``. One fused kernel where Triton runs; two ops otherwise."""
    if _triton_runs(x, residual, weight):
        return triton_ops.add_rms_norm(x, residual, weight, eps)
    h = x + residual
    return rms_norm(h, weight, eps), h


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``x`` ``[..., in]``, ``weight`` ``[out, in]``.

    A product of at most :data:`~llm_kernels.native.MAX_ROWS` rows of float32 on CPU with a
    row-major weight (decode: one row per stream) runs the native kernel
    ``torch.ops.llm_kernels.linear_rows`` when it is available (see
    :mod:`llm_kernels.native`); more rows of float32 on CPU without gradients (a prompt's
    prefill) run oneDNN's product, torch's ``mkldnn._linear_pointwise`` (the one inductor's
    CPU fusions call), where torch has oneDNN: on a Zen 4 VM 1.0-2.2x the speed of
    ``F.linear``'s MKL for the llama-125m shape's products of 17 to 512 rows, median 1.30-1.34x
    over those 16 products (2 threads, 2026-12-03, three runs; MKL takes generic code paths
    on AMD CPUs). Everything else, and anything that
    needs gradients, runs ``F.linear``. All compute the same sums in different orders (float32
    rounding apart).
    """
    path = _linear_path(x, weight, bias)
    if path == "rows" and _native_available():
        return torch.ops.llm_kernels.linear_rows.default(x, weight, bias)
    if path == "onednn" and _ONEDNN[0] and not torch.compiler.is_compiling():
        # (inside torch.compile, inductor picks its own kernels)
        try:
            return torch.ops.mkldnn._linear_pointwise.default(x, weight, bias, "none", [], "")
        except RuntimeError:  # a build whose oneDNN refuses it: BLAS from now on
            _ONEDNN[0] = False
    return F.linear(x, weight, bias)


def decode_weight_layout(weight: torch.Tensor) -> Literal["row-major", "input-major"]:
    """The memory layout in which :func:`linear` multiplies a few rows by ``weight``
    fastest: row-major (``[out, in]`` contiguous) where the native kernel takes it (float32
    on CPU), else input-major (``[in, out]`` in memory), which hands BLAS an untransposed
    operand (with MKL, about 20% faster at 1 row and 30% at 8 than row-major)."""
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and _native_available():
        return "row-major"
    return "input-major"


def _triton_runs(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton kernels take these tensors (see the module docstring)."""
    if triton_ops is None or torch.compiler.is_compiling():
        return False
    if not tensors[0].is_cuda and _INTERPRET_KEY not in _ENVIRON:
        return False  # CPU without the interpreter: one dict lookup (this runs for every op)
    return triton_ops.runs_on(*tensors)


# os.environ's own store, keyed by encoded names: `name in os.environ` encodes the name at
# each call (about 1.5 us, per op in eager decode); this lookup sees every change made
# through os.environ (monkeypatch.setenv included) at a tenth of the cost
_ENVIRON = getattr(os.environ, "_data", os.environ)
_INTERPRET_KEY = (
    os.environ.encodekey("TRITON_INTERPRET") if _ENVIRON is not os.environ else ("TRITON_INTERPRET")
)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@torch.compiler.assume_constant_result
def _native_available() -> bool:
    return native.available()


def _linear_path(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> Literal["rows", "onednn"] | None:
    """Which product :func:`linear` may run instead of ``F.linear``: ``"rows"`` (the native
    kernel: a few rows, a row-major weight), ``"onednn"`` (more rows), or ``None`` (not
    float32 on CPU without gradients)."""
    # cheapest tests first: this runs for every product in eager decode
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or not (x.is_cpu and weight.is_cpu)
    ):
        return None
    if weight.dim() != 2 or weight.numel() == 0 or x.dim() == 0 or x.numel() == 0:
        return None
    if x.shape[-1] != weight.shape[1]:
        return None
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_cpu or bias.dim() != 1):
        return None
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return None  # neither kernel has a backward
    if x.numel() > native.MAX_ROWS * x.shape[-1]:
        return "onednn"
    return "rows" if weight.is_contiguous() else None  # the kernel reads [out, in] row-major


# whether oneDNN's product may run: torch built with it (cleared if a call refuses)
_ONEDNN = [torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")]


def _attend_kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if not all(t.dtype == torch.float32 and t.is_cpu for t in (q, k, v)):
        return False
    if q.shape[2] > native.MAX_ROWS or q.stride(3) != 1 or k.stride(3) != 1 or v.stride(3) != 1:
        return False
    return not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))


def _check_attention_shapes(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention: q, k and v must be 4-D [B, H, T, D]")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    B, H, Tq, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
    if H % k.shape[1] != 0:
        raise ValueError(f"attention: {H} query heads is not a multiple of {k.shape[1]} KV heads")
    if q_pos.shape[-1] != Tq or k_pos.shape[-1] != k.shape[2]:
        raise ValueError(
            f"attention: positions {tuple(q_pos.shape)}/{tuple(k_pos.shape)} do not match "
            f"Tq={Tq}, Tk={k.shape[2]}"
        )
