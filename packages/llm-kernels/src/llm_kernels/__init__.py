"""Tensor ops for llm, each with a torch reference and one dispatcher.

Model code calls :func:`attention`, :func:`apply_rope` and :func:`rms_norm` from here; the
references live in :mod:`llm_kernels.reference`.
"""

from importlib.metadata import version as _version

from llm_kernels.ops import apply_rope, attention, rms_norm
from llm_kernels.reference import attention_mask, rope_cos_sin

__version__ = _version("llm-kernels")

__all__ = ["__version__", "apply_rope", "attention", "attention_mask", "rms_norm", "rope_cos_sin"]
