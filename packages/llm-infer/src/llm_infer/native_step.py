"""The native decode step: one call into llm-kernels for all the layers.

A decode step of a small model is mostly overhead: SmolLM2-135M's 30 layers make some thirty
small torch ops each, and the interpreter and dispatcher cost as much as the matrix products
(docs/benchmarks.md). :class:`NativeDecoder` runs the Llama-style blocks of a decode step as
one ``torch.ops.llm_kernels.decode_layers`` call (the norms, the products through the native
kernels the layers use themselves, RoPE, the cache write, attention and SwiGLU, in C++, in one
parallel region), and keeps in Python what happens once per step: the cache's bookkeeping,
the rotation tables and mask (computed by the model's own code) and the embedding. A float32
LM head (the model's ``Linear`` or ``nn.Linear`` without a bias, after an RMSNorm) joins the
last call with the final norm: a step that has just streamed every weight from memory finds
the interpreter's working set evicted, and each torch op after it pays for that (some 0.1-0.25
ms for the norm alone); other heads run as modules after the call.

It serves models whose every block it can compute exactly as the modules do: llm-core's
``Transformer`` with RMSNorm, RoPE, SwiGLU and no biases, in float32 on CPU, each projection
a float ``nn.Linear`` with row-major weights or a layer offering ``native_weight()`` (GGUF
blocks with int8 activations, llm-quant's ``GGUFLinear``); a static cache, or the engine's
paged cache (its block pool, one token per row). Anything else decodes through the modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llm_infer.paged import PagedKVCache

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
    ``decode_layers``; build it with :meth:`for_model`, which says ``None`` for a model it
    cannot serve exactly."""

    def __init__(
        self,
        model: Any,
        layers: list[dict[str, Any]],
        head: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> None:
        self.model = model
        self.head = head  # (final norm weight, head weight, format) run inside the last call
        cfg = model.config
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.eps = float(cfg.norm_eps)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        # runs of consecutive layers alike in shape (fused or separate projections): one call
        # each, the op's weight lists flattened in layer order
        self.runs: list[tuple[int, int, dict[str, Any]]] = []
        start = 0
        for end in range(1, len(layers) + 1):
            if end == len(layers) or self._shape(layers[end]) != self._shape(layers[start]):
                self.runs.append((start, end, self._flatten(layers[start:end])))
                start = end

    @staticmethod
    def _shape(spec: dict[str, Any]) -> tuple[int, int]:
        return len(spec["qkv"][0]), len(spec["gate_up"][0])

    @staticmethod
    def _flatten(specs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "attn_norms": [s["attn_norm"] for s in specs],
            "mlp_norms": [s["mlp_norm"] for s in specs],
            "qkv": [w for s in specs for w in s["qkv"][0]],
            "qkv_formats": [f for s in specs for f in s["qkv"][1]],
            "o": [s["o"][0] for s in specs],
            "o_formats": [s["o"][1] for s in specs],
            "gate_up": [w for s in specs for w in s["gate_up"][0]],
            "gate_up_formats": [f for s in specs for f in s["gate_up"][1]],
            "down": [s["down"][0] for s in specs],
            "down_formats": [s["down"][1] for s in specs],
        }

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
        if not native.available() or not hasattr(torch.ops.llm_kernels, "decode_layers"):
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
        return cls(model, layers, cls._head(model))

    @staticmethod
    def _head(model: Any) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The final norm and a float32 LM head the op computes as the modules do, or ``None``
        (the modules then run them)."""
        norm = _norm_weight(model.model.norm, model.config.norm_eps)
        head = model.lm_head
        if norm is None or not (type(head) is nn.Linear or _core_type(head, "Linear")):
            return None
        weight = _float_weight(head.weight, head.bias)
        return None if weight is None else (norm, weight[0], weight[1])

    def serves(self, cache: Any) -> bool:
        """Whether this cache is one the fused layers write: a float32 static cache, or a view
        of the engine's paged block pool (float32) for rows of one token each."""
        if isinstance(cache, PagedKVCache):
            k = cache.pool.k
        elif getattr(cache, "kind", None) == "static" and not getattr(cache, "rope_on_read", False):
            k = cache.k[0]
        else:
            return False
        return k.dtype == torch.float32 and k.is_contiguous() and k.device.type == "cpu"

    @torch.no_grad()
    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        model, body = self.model, self.model.model
        B = token.shape[0]
        ctx = model._attention_context(position, cache)  # records the position in the cache
        cos, sin = ctx.rope  # (B, 1, D/2) each
        half = self.head_dim // 2
        cos, sin = cos.reshape(B, half).contiguous(), sin.reshape(B, half).contiguous()
        paged = isinstance(cache, PagedKVCache)
        if paged:
            write = cache.write_slots  # (B,) the pool rows of this step's keys and values
            if write is None or write.numel() != B:
                raise ValueError("the native step takes one real (unpadded) token per row")
            slot = -1
            slots = cache.slots  # (B, S) each row's keys, pool rows in order
            k_caches, v_caches = cache.pool.k_layers, cache.pool.v_layers
        else:
            slot, write, slots = cache.length - 1, None, None
            k_caches, v_caches = cache.k, cache.v
        x = body.embed_tokens(token)  # (B, 1, C)
        op = torch.ops.llm_kernels.decode_layers.default
        last = len(self.runs) - 1
        for i, (start, end, w) in enumerate(self.runs):
            norm, head, head_format = self.head if self.head and i == last else (None, None, -1)
            x = op(
                x,
                w["attn_norms"],
                w["mlp_norms"],
                self.eps,
                w["qkv"],
                w["qkv_formats"],
                w["o"],
                w["o_formats"],
                w["gate_up"],
                w["gate_up_formats"],
                w["down"],
                w["down_formats"],
                k_caches[start:end],
                v_caches[start:end],
                slot,
                cos,
                sin,
                ctx.mask,
                self.n_head,
                self.n_kv_head,
                self.scale,
                slots,
                write,
                norm,
                head,
                head_format,
            )  # (B, 1, C), or the logits (B, V) from the call with the head
        if self.head is not None:
            return x  # (B, V)
        return model.lm_head(body.norm(x))[:, -1]  # (B, V)
