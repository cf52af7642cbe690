"""``llm-kernels check``: every Triton kernel against its torch reference on this device.

On CUDA the kernels run compiled; on CPU under Triton's interpreter (small shapes). Each row
is one op and dtype: the worst absolute error, the worst error relative to the reference's
largest magnitude, and whether both are within the dtype's tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_kernels import reference

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# (absolute, relative-to-the-largest) tolerance of an output in each dtype
TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class CheckResult:
    op: str
    dtype: str
    max_abs: float
    max_rel: float  # max |got - want| / max |want|
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance


def _errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    diff = (got.double().cpu() - want.double().cpu()).abs()
    if not torch.isfinite(diff).all():
        return float("inf"), float("inf")
    scale = want.double().abs().max().item() or 1.0
    return diff.max().item(), diff.max().item() / scale


def _cases(device: str, dtype: torch.dtype, big: bool) -> Iterator[tuple[str, Callable]]:
    """``(op, run)`` pairs; ``run()`` returns ``(got, want)``."""
    from llm_kernels import triton as tk

    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    T, D = (1024, 128) if big else (77, 80)

    def prefill():
        q, k, v = randn(1, 8, T, D), randn(1, 2, T, D), randn(1, 2, T, D)
        pos = torch.arange(T, device=device)
        args = dict(window=T // 4, sink_tokens=4)
        return tk.attention(q, k, v, pos, pos, **args), reference.attention(
            q, k, v, pos, pos, **args
        )

    def decode():
        cap = 4 + T // 2
        q, k, v = randn(2, 8, 1, D), randn(2, 2, cap, D), randn(2, 2, cap, D)
        stream = 5 * cap  # a ring that wrapped: slot 4 + (p - 4) % (cap - 4) holds position p
        kp = torch.arange(cap)
        kp[4:] = stream - 1 - ((stream - 1 - 4 - torch.arange(cap - 4)) % (cap - 4))
        kp, qp = kp.to(device), torch.tensor([stream], device=device)
        args = dict(window=cap - 4, sink_tokens=4)
        return tk.attention(q, k, v, qp, kp, **args), reference.attention(q, k, v, qp, kp, **args)

    def rope_tables():
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        pos = torch.randint(0, 100_000, (T,), generator=g)
        return [t.to(device) for t in reference.rope_cos_sin(pos, inv)]

    def rope():
        q, k = randn(2, 8, T, D), randn(2, 2, T, D)
        cos, sin = rope_tables()
        got_q, got_k = tk.apply_rope_qk(q, k, cos, sin)
        want = torch.cat([reference.apply_rope(t, cos, sin).flatten() for t in (q, k)])
        return torch.cat([got_q.flatten(), got_k.flatten()]), want

    def rope_backward():
        q = randn(2, 8, T, D).requires_grad_(True)
        cos, sin = rope_tables()
        dy = randn(2, 8, T, D)
        (got,) = torch.autograd.grad(tk.apply_rope(q, cos, sin), q, dy)
        (want,) = torch.autograd.grad(reference.apply_rope(q, cos, sin), q, dy)
        return got, want

    N = 4096 if big else 123
    w_norm = (1 + 0.1 * torch.randn(N, generator=g)).to(device)

    def norm():
        x = randn(T, N)
        return tk.rms_norm(x, w_norm), reference.rms_norm(x, w_norm)

    def add_norm():
        x, r = randn(T, N), randn(T, N)
        y, h = tk.add_rms_norm(x, r, w_norm)
        return torch.cat([y.flatten(), h.float().flatten()]), torch.cat(
            [reference.rms_norm(x + r, w_norm).flatten(), (x + r).float().flatten()]
        )

    def norm_backward():
        x, dy = randn(T, N).requires_grad_(True), randn(T, N).float()
        (got,) = torch.autograd.grad(tk.rms_norm(x, w_norm), x, dy)
        (want,) = torch.autograd.grad(reference.rms_norm(x, w_norm), x, dy)
        return got, want

    yield "attention prefill", prefill
    yield "attention decode (ring)", decode
    yield "rope q+k", rope
    yield "rope backward", rope_backward
    yield "rms_norm", norm
    yield "add_rms_norm", add_norm
    yield "rms_norm backward", norm_backward
    M, Nq, K = (16, 1024, 4096) if big else (3, 45, 256)
    for name, format, group, mins, int8_act in (
        ("W8A16 int8", "int8", 32, False, False),
        ("W8A8 int8", "int8", 32, False, True),
        ("W4A16 q4 g32", "q4", 32, False, False),
        ("W4A16 q4 g128 mins", "q4", 128, True, False),
        ("Q8_0", "q8_0", 32, False, False),
        ("Q4_0", "q4_0", 32, False, False),
        ("Q4_1", "q4_1", 32, True, False),
    ):
        yield name, _quant_case(device, dtype, g, M, Nq, K, format, group, mins, int8_act)


def random_quantized(format: str, n: int, k: int, group: int, with_mins: bool, g: torch.Generator):
    """Random weights in ``format`` (:mod:`llm_kernels.reference` layouts) as
    :func:`llm_kernels.quant.quant_linear`'s keyword arguments (``qweight``, ``scales``, ...)."""
    blocks = k // reference.QK

    def half(*shape, low=0.001, high=0.05):
        return (torch.rand(*shape, generator=g) * (high - low) + low).to(torch.float16)

    def raw(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    if format == "q8_0":
        q = torch.randint(-127, 128, (n, blocks, 32), generator=g, dtype=torch.int8)
        d = half(n, blocks, 1).view(torch.uint8)  # (n, blocks, 2)
        return {"qweight": torch.cat((d, q.view(torch.uint8)), -1).reshape(n, -1)}
    if format in ("q4_0", "q4_1"):
        head = half(n, blocks, 1)
        if format == "q4_1":
            head = torch.cat((head, -half(n, blocks, 1, high=0.4)), -1)
        return {
            "qweight": torch.cat((head.view(torch.uint8), raw(n, blocks, 16)), -1).reshape(n, -1)
        }
    if format == "int8":
        q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        return {"qweight": q, "scales": torch.rand(n, generator=g) * 0.05 + 0.001}
    mins = -half(n, k // group, high=0.4) if with_mins else None
    return {"qweight": raw(n, k // 2), "scales": half(n, k // group), "mins": mins,
            "group_size": group}  # fmt: skip


def _quant_case(device, dtype, g, M, N, K, format, group, mins, int8_act):
    from llm_kernels import quant
    from llm_kernels import triton as tk

    def run():
        w = random_quantized(format, N, K, group, mins, g)
        x = torch.randn(M, K, generator=g).to(dtype)
        dense = quant.dequantize(
            w["qweight"], format, scales=w.get("scales"), mins=w.get("mins"), group_size=group
        ).double()  # fmt: skip  (N, K)
        xs = x.double()
        if int8_act:  # the activations as W8A8 quantizes them, per token
            s = x.float().abs().amax(-1, keepdim=True) / 127
            xs = (torch.round(x.float() / s) * s).double()
        on = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in w.items()}
        got = tk.quant_linear(x.to(device), format=format, int8_activations=int8_act, **on)
        return got, F.linear(xs, dense)

    return run


def run_checks(device: str, dtypes: list[str]) -> list[CheckResult]:
    """Check every op in each of ``dtypes`` on ``device`` (``"cuda"``, or ``"cpu"``: Triton's
    interpreter, switched on here for the duration of the checks). Raises ``RuntimeError`` without triton."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"triton is not installed ({e}); nothing to check") from e
    before = os.environ.get("TRITON_INTERPRET")
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    results = []
    try:
        for name in dtypes:
            dtype = DTYPES[name]
            for op, run in _cases(device, dtype, big=device != "cpu"):
                got, want = run()
                max_abs, max_rel = _errors(got, want)
                results.append(CheckResult(op, name, max_abs, max_rel, TOLERANCES[dtype]))
    finally:  # the interpreter only for these checks: later work in the process runs as before
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before
    return results


def compile_checks(arch: int = 90) -> list[tuple[str, dict, str]]:
    """Compile every kernel launch that :func:`run_checks` makes on CUDA (its tile sizes, all
    three dtypes) for ``sm_<arch>`` with triton's bundled compiler, without a GPU:
    ``(kernel, meta-parameters, "ok" or the error)`` per distinct launch."""
    from llm_kernels.triton._jit import compile_only, interpreting

    if interpreting():
        raise RuntimeError("unset TRITON_INTERPRET to compile for a GPU")
    with compile_only(arch) as results:
        for dtype in DTYPES.values():
            for _, run in _cases("cpu", dtype, big=True):
                run()
    return results
