"""Tensor ops for llm, each with a torch reference and one dispatcher.

Model code calls :func:`attention`, :func:`apply_rope`, :func:`rms_norm` and :func:`linear`
from here; the references live in :mod:`llm_kernels.reference`, the natively compiled CPU
kernel behind :func:`linear` in :mod:`llm_kernels.native`.
"""

from importlib.metadata import version as _version

from llm_kernels.memory import huge_pages, on_huge_pages
from llm_kernels.ops import (
    add_rms_norm,
    apply_rope,
    apply_rope_qk,
    attention,
    decode_weight_layout,
    linear,
    rms_norm,
)
from llm_kernels.reference import attention_mask, rope_cos_sin

__version__ = _version("llm-kernels")

__all__ = [
    "__version__",
    "add_rms_norm",
    "apply_rope",
    "apply_rope_qk",
    "attention",
    "attention_mask",
    "decode_weight_layout",
    "huge_pages",
    "linear",
    "on_huge_pages",
    "rms_norm",
    "rope_cos_sin",
]
