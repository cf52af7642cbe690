"""Quantized checkpoints: an llm-core checkpoint directory whose ``config.json`` has a
``quantization`` entry (``{"method": "llm-quant", "scheme": {...}, "modules": [...]}``) and whose
safetensors hold each quantized layer's packed weight and scales in their own dtypes.

:func:`llm_core.save_model` writes one from a model that :func:`~llm_quant.quantize_model`
quantized. :func:`llm_core.load_model` (and so ``llm_infer.load``) reads one through
:func:`prepare_model`, which it finds as the ``llm-quant`` entry point of the
``llm_core.quantization`` group: the quantized modules are built on the 'meta' device and the
file's tensors assigned to them, so the float weights never exist.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llm_quant.quantize import METHOD, convert_for_runtime
from llm_quant.schemes import Scheme


def prepare_model(model: nn.Module, quantization: dict[str, Any]) -> None:
    """Turn ``model`` (freshly built, usually on 'meta') into the structure that the
    checkpoint's ``quantization`` entry describes. Raises ``ValueError`` naming the bad field."""
    if not isinstance(quantization, dict):
        raise ValueError(f"quantization must be an object, got {type(quantization).__name__}")
    if quantization.get("method") != METHOD:
        raise ValueError(f"quantization method {quantization.get('method')!r} is not {METHOD!r}")
    scheme = Scheme.from_dict(quantization.get("scheme"))
    modules = quantization.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ValueError("quantization.modules must be a list of layer names")
    convert_for_runtime(model, scheme, modules)
