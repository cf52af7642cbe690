"""Quantization for llm: INT8 and Q4 schemes, quantized modules, GGUF reading."""

from importlib.metadata import version as _version

__version__ = _version("llm-quant")

__all__ = ["__version__"]
