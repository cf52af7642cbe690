"""One kernel object, two runtimes: compiled Triton for CUDA tensors, Triton's interpreter on CPU.

``triton.jit`` decides between the two once, when a module is imported (it reads
``TRITON_INTERPRET`` then), so a process could never run both, and a test that sets the
variable would change every kernel imported after it. :func:`kernel` keeps the plain function
instead and builds each runtime's object the first time a launch needs it; the choice is made at
each launch from :func:`interpreting`, which reads ``TRITON_INTERPRET`` at that moment
(``triton.knobs.runtime.interpret``). Our kernels call no ``@triton.jit`` function of ours;
the ones of ``triton.language`` they use (``tl.sum``, ``tl.cdiv``, ...) were built as compiled
functions when triton was imported, so an interpreted launch runs them interpreted for its
duration (:func:`_jit_calls_interpreted`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def interpreting() -> bool:
    """Whether Triton's interpreter is on now (``TRITON_INTERPRET=1``), read at each call."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def runs_on(*tensors: torch.Tensor | None) -> bool:
    """Whether a Triton kernel can take these tensors now: all on CUDA, or all on CPU with the
    interpreter on. ``None`` entries (absent optional tensors) are ignored."""
    present = [t for t in tensors if t is not None]
    if all(t.is_cuda for t in present):
        return True
    return interpreting() and all(t.is_cpu for t in present)


class Kernel:
    """A Triton kernel launched as ``kernel[grid](*args, **meta)`` in either runtime."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self._compiled: JITFunction | None = None
        self._interpreted: InterpretedFunction | None = None

    @property
    def compiled(self) -> JITFunction:
        """The compiled-runtime object (``triton.jit`` of the function)."""
        if self._compiled is None:
            self._compiled = JITFunction(self.fn)
        return self._compiled

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        if _compile_only.target is not None:
            return functools.partial(_compile_launch, self)
        if interpreting():
            if self._interpreted is None:
                self._interpreted = InterpretedFunction(self.fn)
            launch = self._interpreted[grid]

            def interpreted(*args: Any, **kwargs: Any) -> Any:
                with _jit_calls_interpreted():
                    return launch(*args, **kwargs)

            return interpreted
        return self.compiled[grid]


# keyed by the plain function: hashing a JITFunction walks its source (its cache key)
_interpreted_library: dict[Callable[..., Any], InterpretedFunction] = {}
_patch_lock = threading.Lock()


@contextlib.contextmanager
def _jit_calls_interpreted() -> Iterator[None]:
    """While an interpreted kernel runs, a call to a compiled ``triton.language`` function
    (``tl.sum`` is ``@triton.jit`` code) runs that function under the interpreter, as it would
    had triton been imported with ``TRITON_INTERPRET=1``. One interpreted launch at a time."""

    def call(fn: JITFunction, *args: Any, **kwargs: Any) -> Any:
        if fn.fn not in _interpreted_library:
            _interpreted_library[fn.fn] = InterpretedFunction(fn.fn)
        return _interpreted_library[fn.fn](*args, **kwargs)

    with _patch_lock:
        original = JITFunction.__call__
        JITFunction.__call__ = call  # type: ignore[method-assign]
        try:
            yield
        finally:
            JITFunction.__call__ = original  # type: ignore[method-assign]


def kernel(fn: Callable[..., Any]) -> Kernel:
    """Decorator: ``@kernel`` in place of ``@triton.jit`` (see the module docstring)."""
    return Kernel(fn)


_TL_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def dot_dtype(dtype: torch.dtype) -> Any:
    """The ``tl`` dtype in which a kernel feeds ``tl.dot`` operands of torch ``dtype``.

    Its own, except bfloat16 under the interpreter: there ``tl.dot`` of bfloat16 operands
    returns garbage (Triton 3.x's interpreter holds bfloat16 as raw 16-bit integers and numpy
    multiplies those), so the operands go in as float32, which is exact for bfloat16 values.
    """
    if dtype == torch.bfloat16 and interpreting():
        return triton.language.float32
    return getattr(triton.language, _TL_DTYPES[dtype])


class _CompileOnly:
    def __init__(self) -> None:
        self.target: Any = None  # a GPUTarget while compile_only() is active
        self.results: list[tuple[str, dict, str]] = []


_compile_only = _CompileOnly()
_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int8: "i8",
    torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64",
}  # fmt: skip


@contextlib.contextmanager
def compile_only(arch: int = 90) -> Iterator[list[tuple[str, dict, str]]]:
    """Within this block, a launch compiles its kernel for CUDA ``sm_<arch>`` instead of
    running it (the wrappers' outputs stay unwritten); no GPU is needed, only triton's
    bundled compiler. Yields the list it fills with ``(kernel, meta, outcome)``, outcome
    ``"ok"`` or the compiler's error. Launches with the same meta-parameters compile once."""
    from triton.backends.compiler import GPUTarget

    _compile_only.target, _compile_only.results = GPUTarget("cuda", arch, 32), []
    try:
        yield _compile_only.results
    finally:
        _compile_only.target = None


def _compile_launch(kern: Kernel, *args: Any, num_warps: int = 4, num_stages: int = 3,
                    **meta: Any) -> None:  # fmt: skip
    from triton.compiler import ASTSource

    fn = kern.compiled
    bound = dict(zip(fn.arg_names, args, strict=False)) | meta
    signature, constexprs = {}, {}
    for i, name in enumerate(fn.arg_names):
        value = bound[name]
        if name in meta:
            signature[name], constexprs[(i,)] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i64" if abs(int(value)) >= 2**31 else "i32"
    shown = {
        k: (v.value if isinstance(v, triton.language.constexpr) else v) for k, v in meta.items()
    }
    shown = {k: (str(v) if not isinstance(v, int | str | bool) else v) for k, v in shown.items()}
    if any(r[0] == kern.__name__ and r[1] == shown for r in _compile_only.results):
        return
    try:
        triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=_compile_only.target,
            options={"num_warps": num_warps, "num_stages": num_stages},
        )
        outcome = "ok"
    except Exception as e:  # the compiler's own error, reported per kernel
        outcome = (
            f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
        )
    _compile_only.results.append((kern.__name__, shown, outcome))
