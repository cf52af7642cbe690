"""The llm chat REPL."""

from importlib.metadata import version as _version

__version__ = _version("llm-repl")

__all__ = ["__version__"]
