"""Quantization for llm: INT8 and Q4 schemes, quantized modules, GGUF reading."""

from importlib.metadata import version as _version

from llm_quant.dequant import dequantize
from llm_quant.gguf import GGUFError, GGUFFile, load_gguf_model, tensor_to_float

__version__ = _version("llm-quant")

__all__ = [
    "GGUFError",
    "GGUFFile",
    "__version__",
    "dequantize",
    "load_gguf_model",
    "tensor_to_float",
]
