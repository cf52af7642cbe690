"""Quantization for llm: INT8 and Q4 schemes, quantized modules, quantized checkpoints."""

from importlib.metadata import version as _version

from llm_quant.dequant import dequantize
from llm_quant.gguf import GGUFError, GGUFFile, load_gguf_model, tensor_to_float
from llm_quant.linear import GGUFEmbedding, GGUFLinear, Int8Linear, Q4Linear, QuantLinear
from llm_quant.quantize import (
    collect_activation_stats,
    convert_for_runtime,
    quantizable_linears,
    quantize_model,
    quantized_state_dict,
)
from llm_quant.schemes import Scheme, quantize_int8, quantize_q4

__version__ = _version("llm-quant")

__all__ = [
    "GGUFEmbedding",
    "GGUFError",
    "GGUFFile",
    "GGUFLinear",
    "Int8Linear",
    "Q4Linear",
    "QuantLinear",
    "Scheme",
    "__version__",
    "collect_activation_stats",
    "convert_for_runtime",
    "dequantize",
    "load_gguf_model",
    "quantizable_linears",
    "quantize_int8",
    "quantize_model",
    "quantize_q4",
    "quantized_state_dict",
    "tensor_to_float",
]
