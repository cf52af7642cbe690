"""Training for llm: data preparation, loader, training loop, resume, distributed."""

from importlib.metadata import version as _version

__version__ = _version("llm-train")

__all__ = ["__version__"]
