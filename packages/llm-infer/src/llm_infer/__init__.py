"""Inference for llm: load(), sampling, LLM.generate/stream/chat, Session, Engine.

Names are imported on first use (PEP 562), so that ``llm_infer.params`` (SamplingParams, the
one table of sampling ranges) and ``llm_infer.errors`` can be read without importing torch:
the REPL's ``/set`` does.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

__version__ = _version("llm-infer")

_HOMES = {
    "LLM": "llm_infer.llm",
    "Completion": "llm_infer.generate",
    "TokenLogprob": "llm_infer.generate",
    "Usage": "llm_infer.generate",
    "ContextLengthError": "llm_infer.errors",
    "EngineBusyError": "llm_infer.errors",
    "EngineClosedError": "llm_infer.errors",
    "InferError": "llm_infer.errors",
    "LoadError": "llm_infer.errors",
    "SamplingError": "llm_infer.errors",
    "Engine": "llm_infer.engine",
    "EngineStats": "llm_infer.engine",
    "RequestHandle": "llm_infer.engine",
    "RequestTiming": "llm_infer.engine",
    "SamplingParams": "llm_infer.params",
    "Session": "llm_infer.session",
    "load": "llm_infer.load",
    "show_kernel_notices": "llm_infer.load",
    "smollm2_path": "llm_infer.load",
}

__all__ = [
    "LLM",
    "Completion",
    "ContextLengthError",
    "Engine",
    "EngineBusyError",
    "EngineClosedError",
    "EngineStats",
    "InferError",
    "LoadError",
    "RequestHandle",
    "RequestTiming",
    "SamplingError",
    "SamplingParams",
    "Session",
    "TokenLogprob",
    "Usage",
    "__version__",
    "load",
    "show_kernel_notices",
    "smollm2_path",
]

if TYPE_CHECKING:
    from llm_infer.engine import Engine, EngineStats, RequestHandle, RequestTiming
    from llm_infer.errors import (
        ContextLengthError,
        EngineBusyError,
        EngineClosedError,
        InferError,
        LoadError,
        SamplingError,
    )
    from llm_infer.generate import Completion, TokenLogprob, Usage
    from llm_infer.llm import LLM
    from llm_infer.load import load, show_kernel_notices, smollm2_path
    from llm_infer.params import SamplingParams
    from llm_infer.session import Session


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'llm_infer' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
