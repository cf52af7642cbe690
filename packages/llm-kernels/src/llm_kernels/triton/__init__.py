"""Triton kernels behind :mod:`llm_kernels.ops`'s dispatchers.

Each module holds one op's kernels and a wrapper that checks shapes, allocates the output and
launches. They run compiled on CUDA tensors and under Triton's interpreter on CPU tensors when
``TRITON_INTERPRET=1`` is set at launch time (:func:`runs_on`); see :mod:`._jit`.
"""

from llm_kernels.triton._jit import interpreting, runs_on
from llm_kernels.triton.attention import attention
from llm_kernels.triton.quant_linear import quant_linear, quantize_per_token
from llm_kernels.triton.rms_norm import add_rms_norm, rms_norm
from llm_kernels.triton.rope import apply_rope, apply_rope_qk

__all__ = [
    "add_rms_norm",
    "apply_rope",
    "apply_rope_qk",
    "attention",
    "interpreting",
    "quant_linear",
    "quantize_per_token",
    "rms_norm",
    "runs_on",
]
