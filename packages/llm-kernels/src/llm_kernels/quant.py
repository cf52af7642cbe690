"""Products with quantized weights: ``y = x @ W.T`` with ``W`` kept in its quantized layout.

The layouts (GGUF Q8_0 / Q4_0 / Q4_1 blocks as in the file; the project's ``int8`` and ``q4``)
are described in :mod:`llm_kernels.reference`, whose dequantizers are the ground truth.
:func:`quant_linear` runs float32 on CPU through the native kernel
``torch.ops.llm_kernels.quant_rows``: up to :data:`~llm_kernels.native.MAX_ROWS` rows (decode)
in the arithmetic asked for, and prompts of up to :data:`PROMPT_ROWS` rows with float
activations (``"int8-token"`` and ``"int16"`` keep theirs); longer prompts, other devices and
dtypes, and machines without the native kernels dequantize the weight and run ``F.linear``. Where Triton runs (CUDA tensors, or CPU ones under
``TRITON_INTERPRET=1``; see :mod:`llm_kernels.ops`) every shape goes to
:func:`llm_kernels.triton.quant_linear` instead: W8A16 / W4A16 tiles dequantized in registers,
and W8A8 (per-token int8 activations) for the int8 format when ``activations="int8"`` is asked
for explicitly.

The native kernel multiplies in one of four ways (``activations``):

- ``"int8"``: each row of ``x`` quantized per block of 32 values (llama.cpp's Q8_0 / Q8_1),
  int8 dot products (AVX-512 VNNI or AVX-VNNI ``vpdpbusd``, else AVX2 ``maddubs``). Its error
  against the dequantized product is that of the activations' rounding: about 0.3% of the
  product's scale (see the tests).
- ``"int8-token"``: the same with one scale per row of ``x`` (dynamic per-token W8A8).
- ``"int16"``: each row of ``x`` quantized per block of 32 to int16 (``dx = amax / 32767``),
  the weights widened to int16, int16 dot products (AVX-512 VNNI or AVX-VNNI ``vpdpwssd``,
  else AVX2 ``madd``): steps 258 times finer than int8's, errors about 250 times smaller
  (3e-6 of the terms' scale against 7e-4 in ``benches/quant_kernels.py``), in 1.15-1.3x
  int8's time on 4-bit blocks at one row, about half of ``"float"``'s (Q8_0, bound by
  reading the weights: about int8's time).
- ``"float"``: the weights widened to float32 in registers; the dequantized product up to
  float32 rounding (about 1e-6 relative).

:data:`DEFAULT_ACTIVATIONS` says which one runs when the caller does not choose, per format;
the choice comes from ``benches/quant_kernels.py`` (figures in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from llm_kernels import native, reference
from llm_kernels.ops import _needs_grad, _triton_runs, triton_ops

Format = Literal["q8_0", "q4_0", "q4_1", "int8", "q4", "q4_0x8", "q4_1x8"]
Activations = Literal["int8", "float", "int8-token", "int16"]
_MODES = {"float": 0, "int8": 1, "int8-token": 2, "int16": 3}  # the kernel's codes

# Past MAX_ROWS rows (a prompt), the native kernel multiplies with float activations (the
# exact dequantized product), 16 rows a pass, up to PROMPT_ROWS rows; beyond, dequantizing
# and BLAS are faster (SmolLM2's 1536 x 576 Q4_1 on one core: 0.76 ms against 1.36 ms at 32
# rows, even at 128, slower at 512; docs/benchmarks.md). "int16" stays int16 there: within
# about 3e-6 of that product and faster (the same matrix, 128 rows: 2.6 ms against 4.7 ms).
PROMPT_ROWS = 128
# kernel codes; q4_0x8 and q4_1x8 are Q4_0 / Q4_1 with eight rows interleaved
# (reference.interleave8), which the native kernel multiplies with float or int8 activations
FORMATS: dict[str, int] = {
    "q8_0": 0,
    "q4_0": 1,
    "q4_1": 2,
    "int8": 3,
    "q4": 4,
    "q4_0x8": 5,
    "q4_1x8": 6,
}
DEFAULT_ACTIVATIONS: dict[str, Activations] = {
    "q8_0": "int8",
    "q4_0": "int8",
    "q4_1": "int8",
    "int8": "int8",
    "q4": "int8",
    "q4_0x8": "int8",
    "q4_1x8": "int8",
}


def dequantize(
    qweight: torch.Tensor,
    format: Format,
    *,
    scales: torch.Tensor | None = None,
    mins: torch.Tensor | None = None,
    group_size: int = 32,
) -> torch.Tensor:
    """The float32 ``[N, K]`` weight that ``qweight`` (and ``scales``, ``mins``) encode in
    ``format``; see :mod:`llm_kernels.reference`. Raises ``ValueError`` on an unknown format or
    inconsistent shapes."""
    if format in reference.INTERLEAVED:
        kind = reference.INTERLEAVED[format]
        k = qweight.shape[-1] // reference.BLOCK_BYTES[kind] * reference.QK
        return dequantize(reference.deinterleave8(qweight, k, format), kind)  # type: ignore[arg-type]
    if format in reference.BLOCK_BYTES:
        k = qweight.shape[-1] // reference.BLOCK_BYTES[format] * reference.QK
        fn = {
            "q8_0": reference.dequantize_q8_0,
            "q4_0": reference.dequantize_q4_0,
            "q4_1": reference.dequantize_q4_1,
        }[format]
        return fn(qweight, k)
    if format == "int8":
        if scales is None:
            raise ValueError("int8: scales are required")
        return reference.dequantize_int8(qweight, scales)
    if format == "q4":
        if scales is None:
            raise ValueError("q4: scales are required")
        return reference.dequantize_q4(qweight, scales, mins, group_size)
    raise ValueError(f"unknown quantized format {format!r}; expected one of {sorted(FORMATS)}")


def quant_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    format: Format,
    *,
    scales: torch.Tensor | None = None,
    mins: torch.Tensor | None = None,
    group_size: int = 32,
    bias: torch.Tensor | None = None,
    activations: Activations | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` (``[N, K]``) given quantized in ``format``.

    ``x``: ``[..., K]``; returns ``[..., N]`` in ``x.dtype``. ``activations`` picks the native
    kernel's arithmetic (``"int8"``, ``"int8-token"``, ``"int16"`` or ``"float"``, see the
    module docstring; default :data:`DEFAULT_ACTIVATIONS`); the torch fallback computes the
    same rounding of activations for ``"int8-token"`` and none otherwise. Raises
    ``ValueError`` on an unknown format or inconsistent shapes.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown quantized format {format!r}; expected one of {sorted(FORMATS)}")
    mode = DEFAULT_ACTIVATIONS[format] if activations is None else activations
    if mode not in _MODES:
        raise ValueError(f"activations must be one of {sorted(_MODES)}, got {mode!r}")
    _check_shapes(x, qweight, format, scales, mins, group_size)
    interleaved = format in reference.INTERLEAVED
    # the native kernel multiplies interleaved blocks with float or int8 activations: int16
    # takes the dequantized weight below
    native_mode = not interleaved or mode != "int16"
    if _triton_applies(x, qweight, scales, mins, bias) and not interleaved:
        return triton_ops.quant_linear(
            x,
            qweight,
            format,
            scales=scales,
            mins=mins,
            group_size=group_size,
            bias=bias,
            int8_activations=mode == "int8-token" and format == "int8",
        )
    if native_mode and _kernel_applies(x, qweight, bias) and native.available():
        if mode == "int8" and x.numel() > native.MAX_ROWS * x.shape[-1]:
            mode = "float"  # a prompt: the exact product, as the fallback below computes it
        return torch.ops.llm_kernels.quant_rows.default(
            x,
            qweight,
            scales,
            mins,
            FORMATS[format],
            group_size,
            bias,
            _MODES[mode],
        )
    w = dequantize(qweight, format, scales=scales, mins=mins, group_size=group_size)  # (N, K)
    if mode == "int8-token":
        x = quantize_per_token(x)
    return F.linear(x, w.to(device=x.device, dtype=x.dtype), bias)


def quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as dynamic per-token W8A8 rounds it: each row to ``dx * round(x / dx)``
    with ``dx = amax / 127`` (ties away from zero), returned in ``x.dtype``."""
    d = x.abs().amax(-1, keepdim=True).float() / 127  # (..., 1)
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    xs = (x.float() * inv).double()
    q = torch.sign(xs) * torch.floor(xs.abs() + 0.5)  # (..., K)
    return (q.float() * d).to(x.dtype)


def _triton_applies(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    # weight-only kernels: no gradient flows to x through them
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if not _triton_runs(x, *tensors):
        return False
    return not _needs_grad(x)


def _kernel_applies(x: torch.Tensor, qweight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if x.dtype != torch.float32 or not (x.is_cpu and qweight.is_cpu):
        return False
    if x.dim() == 0 or x.shape[-1] % reference.QK != 0 or x.numel() == 0:
        return False
    if x.numel() > PROMPT_ROWS * x.shape[-1] or not qweight.is_contiguous():
        return False
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_cpu):
        return False
    return not (torch.is_grad_enabled() and x.requires_grad)


def _check_shapes(
    x: torch.Tensor,
    qweight: torch.Tensor,
    format: str,
    scales: torch.Tensor | None,
    mins: torch.Tensor | None,
    group_size: int,
) -> None:
    k = x.shape[-1] if x.dim() else 0
    if qweight.dim() != 2:
        raise ValueError(f"{format}: qweight must be 2-D, got {tuple(qweight.shape)}")
    n = qweight.shape[0]
    if format in reference.INTERLEAVED:
        if n % 8:
            raise ValueError(f"{format}: interleaved blocks need N a multiple of 8, got {n}")
        format = reference.INTERLEAVED[format]
    if format in reference.BLOCK_BYTES:
        want, dtype = (k // reference.QK * reference.BLOCK_BYTES[format]), torch.uint8
        if k % reference.QK != 0:
            raise ValueError(f"{format}: x has {k} features, not a multiple of {reference.QK}")
    elif format == "int8":
        want, dtype = k, torch.int8
        if scales is None or scales.dtype != torch.float32 or scales.shape != (n,):
            raise ValueError(f"int8: scales must be float32 [{n}]")
    else:
        if group_size not in (32, 64, 128) or k % group_size != 0:
            raise ValueError(
                f"q4: group_size must be 32, 64 or 128 and divide K={k}, got {group_size}"
            )
        want, dtype = k // 2, torch.uint8
        for name, t in (("scales", scales), ("mins", mins)):
            if (t is not None or name == "scales") and (
                t is None or t.dtype != torch.float16 or t.shape != (n, k // group_size)
            ):
                raise ValueError(f"q4: {name} must be float16 [{n}, {k // group_size}]")
    if qweight.dtype != dtype or qweight.shape[1] != want:
        raise ValueError(
            f"{format}: for x with {k} features qweight must be {dtype} [N, {want}], "
            f"got {qweight.dtype} {tuple(qweight.shape)}"
        )
