"""Inference for llm: load(), sampling, Generator, Session, Engine."""

from importlib.metadata import version as _version

__version__ = _version("llm-infer")

__all__ = ["__version__"]
