"""Tool-calling agent loop for llm with sandboxed tools. No torch."""

from importlib.metadata import version as _version

__version__ = _version("llm-agent")

__all__ = ["__version__"]
