"""Retrieval for llm: chunking, embedders, indexes, prompt assembly. No torch."""

from importlib.metadata import version as _version

__version__ = _version("llm-rag")

__all__ = ["__version__"]
