"""Inference for llm: load(), sampling, LLM.generate/stream/chat, Session, Engine."""

from importlib.metadata import version as _version

from llm_infer.engine import Engine, EngineStats, RequestHandle
from llm_infer.errors import (
    ContextLengthError,
    EngineBusyError,
    EngineClosedError,
    InferError,
    LoadError,
    SamplingError,
)
from llm_infer.generation import Completion, TokenLogprob, Usage
from llm_infer.llm import LLM
from llm_infer.load import load, show_kernel_notices, smollm2_path
from llm_infer.sampling import SamplingParams

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
    "SamplingError",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
    "__version__",
    "load",
    "show_kernel_notices",
    "smollm2_path",
]
