"""What quantization costs a model: each layer's relative weight error, the logit error and
the perplexity change on held-out tokens (``llm-quant report``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llm_quant.linear import QuantLinear
from llm_quant.quantize import quantize_model
from llm_quant.schemes import Scheme


@dataclass
class QuantReport:
    """One scheme applied to one model: ``layer_errors`` (name -> ||W - W_q|| / ||W||),
    ``logit_error`` (||logits_q - logits|| / ||logits|| on the held-out tokens),
    ``perplexity`` before and after, sizes of the linear weights in bytes."""

    scheme: Scheme
    layer_errors: dict[str, float] = field(default_factory=dict)
    logit_error: float = 0.0
    perplexity: float = math.nan
    perplexity_quantized: float = math.nan
    float_bytes: int = 0
    quantized_bytes: int = 0

    @property
    def compression(self) -> float:
        """float32 bytes of the quantized layers over their quantized bytes."""
        return self.float_bytes / self.quantized_bytes if self.quantized_bytes else math.nan


def relative_weight_errors(float_model: nn.Module, quantized: nn.Module) -> dict[str, float]:
    """``||W - dequantize(W_q)|| / ||W||`` for each quantized layer of ``quantized``."""
    originals = dict(float_model.named_modules())
    errors = {}
    for name, layer in quantized.named_modules():
        if isinstance(layer, QuantLinear):
            w = originals[name].weight.detach().float()
            errors[name] = ((layer.dequantize() - w).norm() / w.norm().clamp_min(1e-30)).item()
    return errors


@torch.no_grad()
def perplexity_and_logits(model: nn.Module, tokens: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Perplexity of ``tokens`` (``[B, T]``, each row scored after its first token) and the
    logits ``[B, T, V]``."""
    logits = model(tokens).float()  # (B, T, V)
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return math.exp(nll.item()), logits


def report(model: nn.Module, scheme: Scheme, tokens: torch.Tensor) -> QuantReport:
    """Quantize a copy of ``model`` with ``scheme`` and measure it against ``model`` on the
    held-out ``tokens`` (``[B, T]``). ``model`` itself is left as it is."""
    quantized = quantize_model(copy.deepcopy(model), scheme)
    result = QuantReport(scheme, relative_weight_errors(model, quantized))
    ppl, logits = perplexity_and_logits(model, tokens)
    ppl_q, logits_q = perplexity_and_logits(quantized, tokens)
    result.perplexity, result.perplexity_quantized = ppl, ppl_q
    result.logit_error = ((logits_q - logits).norm() / logits.norm()).item()
    layers = [m for m in quantized.modules() if isinstance(m, QuantLinear)]
    result.float_bytes = sum(4 * m.in_features * m.out_features for m in layers)
    result.quantized_bytes = sum(m.weight_bytes() for m in layers)
    return result
