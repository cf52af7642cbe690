"""OpenAI-compatible HTTP server for llm."""

from importlib.metadata import version as _version

__version__ = _version("llm-serve")

__all__ = ["__version__"]
