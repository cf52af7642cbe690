"""The native decode step: one call into llm-kernels per layer.

A decode step of a small model is mostly overhead: SmolLM2-135M's 30 layers make some thirty
small torch ops each, and the interpreter and dispatcher cost as much as the matrix products
(docs/benchmarks.md). :class:`NativeDecoder` runs each Llama-style block of a decode step as
one ``torch.ops.llm_kernels.decode_layer`` call (the norms, the products through the native
kernels the layers use themselves, RoPE, the cache write, attention and SwiGLU, in C++), and
keeps in Python what happens once per step: the cache's bookkeeping, the rotation tables and
mask (computed by the model's own code), the embedding, the final norm and the LM head.

It serves models whose every block it can compute exactly as the modules do: llm-core's
``Transformer`` with RMSNorm, RoPE, SwiGLU and no biases, in float32 on CPU, each projection
a float ``nn.Linear`` with row-major weights or a layer offering ``native_weight()`` (GGUF
blocks with int8 activations, llm-quant's ``GGUFLinear``); a static cache. Anything else
decodes through the modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

Spec = tuple[list[torch.Tensor], list[int]]  # weights and their kernel format codes
FLOAT = -1  # the format code of float32 row-major weights


def _core_type(module: Any, name: str) -> bool:
    # llm-core's own module (its Linear's forward is llm_kernels.linear: the same product)
    return type(module).__name__ == name and type(module).__module__ == "llm_core.model"


def _weight(layer: Any) -> tuple[torch.Tensor, int] | None:
    native = getattr(layer, "native_weight", None)
    if callable(native):
        return native()
    if type(layer) is nn.Linear or _core_type(layer, "Linear"):
        return _float_weight(layer.weight, layer.bias)
    return None  # a layer of its own: its forward may compute something else


def _float_weight(
    weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, int] | None:
    if bias is not None or weight.dtype != torch.float32 or not weight.is_contiguous():
        return None
    return weight.detach(), FLOAT


def _group(fused: Any, layers: list[Any]) -> Spec | None:
    """One fused product (llm-core's ``FusedLinears``, while active) or the separate layers."""
    if fused is not None and fused.active():
        one = _float_weight(fused.weight, fused.bias)
        if one is not None:
            return [one[0]], [one[1]]
    weights = [_weight(layer) for layer in layers]
    if any(w is None for w in weights):
        return None
    return [w[0] for w in weights], [w[1] for w in weights]  # type: ignore[index]


def _norm_weight(norm: Any, eps: float) -> torch.Tensor | None:
    weight = getattr(norm, "weight", None)
    if not _core_type(norm, "RMSNorm") or getattr(norm, "eps", None) != eps:
        return None
    if weight is None or weight.dtype != torch.float32 or not weight.is_contiguous():
        return None
    return weight.detach()


class NativeDecoder:
    """``decoder(token, position, cache) -> logits [B, V]`` through llm-kernels'
    ``decode_layer``; build it with :meth:`for_model`, which says ``None`` for a model it
    cannot serve exactly."""

    def __init__(self, model: Any, layers: list[dict[str, Any]]) -> None:
        self.model = model
        self.layers = layers
        cfg = model.config
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.eps = float(cfg.norm_eps)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    @classmethod
    def for_model(cls, model: Any) -> NativeDecoder | None:
        """The decoder for ``model``, or ``None`` when the native kernels are unavailable or a
        block is not one it computes as the modules do (see the module docstring)."""
        from llm_core.model import Transformer
        from llm_kernels import native

        # llm-core's Transformer, forward and all: a wrapper or a subclass with a forward of its
        # own (a test's gate, a hook) decodes through that forward
        if not isinstance(model, Transformer) or type(model).forward is not Transformer.forward:
            return None
        cfg, body = model.config, model.model
        if (
            getattr(cfg, "norm", None) != "rmsnorm"
            or getattr(cfg, "mlp", None) != "swiglu"
            or getattr(cfg, "position_encoding", None) != "rope"
            or getattr(cfg, "qkv_bias", True)
            or getattr(cfg, "o_bias", True)
            or cfg.head_dim % 2
        ):
            return None
        try:
            if model.device.type != "cpu" or model.dtype != torch.float32:
                return None
        except AttributeError:
            return None
        if not native.available() or not hasattr(torch.ops.llm_kernels, "decode_layer"):
            return None
        layers = []
        for block in body.layers:
            attn, mlp = block.self_attn, block.mlp
            spec = {
                "attn_norm": _norm_weight(block.input_layernorm, cfg.norm_eps),
                "mlp_norm": _norm_weight(block.post_attention_layernorm, cfg.norm_eps),
                "qkv": _group(attn.qkv, [attn.q_proj, attn.k_proj, attn.v_proj]),
                "o": _weight(attn.o_proj),
                "gate_up": _group(mlp.gate_up, [mlp.gate_proj, mlp.up_proj]),
                "down": _weight(mlp.down_proj),
            }
            if any(v is None for v in spec.values()):
                return None
            layers.append(spec)
        return cls(model, layers)

    def serves(self, cache: Any) -> bool:
        """Whether this cache is one the fused layers write (a float32 static cache)."""
        if getattr(cache, "kind", None) != "static" or getattr(cache, "rope_on_read", False):
            return False
        k = cache.k[0]
        return k.dtype == torch.float32 and k.is_contiguous() and k.device.type == "cpu"

    @torch.no_grad()
    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        model, body = self.model, self.model.model
        B = token.shape[0]
        ctx = model._attention_context(position, cache)  # records the position in the cache
        cos, sin = ctx.rope  # (B, 1, D/2) each
        half = self.head_dim // 2
        cos, sin = cos.reshape(B, half).contiguous(), sin.reshape(B, half).contiguous()
        slot = cache.length - 1
        x = body.embed_tokens(token)  # (B, 1, C)
        op = torch.ops.llm_kernels.decode_layer.default
        for i, spec in enumerate(self.layers):
            x = op(
                x,
                spec["attn_norm"],
                spec["mlp_norm"],
                self.eps,
                spec["qkv"][0],
                spec["qkv"][1],
                spec["o"][0],
                spec["o"][1],
                spec["gate_up"][0],
                spec["gate_up"][1],
                spec["down"][0],
                spec["down"][1],
                cache.k[i],
                cache.v[i],
                slot,
                cos,
                sin,
                ctx.mask,
                self.n_head,
                self.n_kv_head,
                self.scale,
            )  # (B, 1, C)
        return model.lm_head(body.norm(x))[:, -1]  # (B, V)
