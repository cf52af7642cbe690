"""Inference for llm: load(), sampling, LLM.generate/stream/chat, Session, Engine."""

from importlib.metadata import version as _version

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

__version__ = _version("llm-infer")

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
