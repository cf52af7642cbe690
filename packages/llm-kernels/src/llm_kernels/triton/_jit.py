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
