"""Inference for llm: load(), sampling, LLM.generate/stream/chat, Session, Engine."""

from importlib.metadata import version as _version

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
from llm_infer.load import load
from llm_infer.sampling import SamplingParams

__version__ = _version("llm-infer")

__all__ = [
    "LLM",
    "Completion",
    "ContextLengthError",
    "EngineBusyError",
    "EngineClosedError",
    "InferError",
    "LoadError",
    "SamplingError",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
    "__version__",
    "load",
]
