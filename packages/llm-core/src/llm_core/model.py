"""The decoder-only Transformer, from small parts to the whole.

Module names follow HF transformers (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``,
``mlp.gate_proj``, ``model.norm``, ``lm_head``), so importing HF weights is a renaming of nothing.
All tensor ops with a kernel behind them go through :mod:`llm_kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from llm_kernels import (
    apply_rope,
    attention,
    attention_mask,
    decode_weight_layout,
    huge_pages,
    linear,
    on_huge_pages,
    rms_norm,
    rope_cos_sin,
)

from llm_core.cache import KVCache, SinkKVCache, StaticKVCache
from llm_core.config import ModelConfig
from llm_core.rope import rope_frequencies

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps)


class RotaryEmbedding(nn.Module):
    """RoPE angle tables, computed from positions on demand (no length limit).

    With ``dynamic_ntk`` scaling the frequencies follow the current length: the largest
    position of the call plus one (never below the training length).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.dynamic = config.rope_scaling is not None and config.rope_scaling.type == "dynamic_ntk"
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def forward(
        self, positions: torch.Tensor, seq_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.dynamic and seq_len is not None and seq_len > self.config.training_seq_len:
            inv_freq = rope_frequencies(self.config, seq_len)[0].to(inv_freq.device)
        return rope_cos_sin(positions, inv_freq, self.attention_scaling)  # (B, T, D/2) each


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Absolute sin/cos encodings of "Attention Is All You Need": ``[..., T, dim]`` in float32."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=positions.device) / dim))
    angles = positions.float().unsqueeze(-1) * inv_freq  # (..., T, dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., T, dim)


@dataclass
class AttentionContext:
    """What every layer's attention needs from one forward call, computed once per call."""

    rope: tuple[torch.Tensor, torch.Tensor] | None  # tables of the queries (and of new keys)
    rope_keys: tuple[torch.Tensor, torch.Tensor] | None  # tables of all keys, if rotated on read
    q_pos: torch.Tensor  # (B, T)
    k_pos: torch.Tensor  # (B, S)
    window: int | None
    sink_tokens: int
    cache: KVCache | None
    mask: torch.Tensor  # (B|1, 1, T, S): attention_mask of q_pos, k_pos, window, sink_tokens


class FusedLinears:
    """Several ``nn.Linear`` that read the same input, computed as one matrix product.

    The layers' weights (and biases) become views into one concatenated tensor, so memory
    stays the same and their names, state_dict and autograd behave as before. The fused
    product is used only where nothing needs their gradients, and only while every layer
    still holds its view (``load_state_dict(assign=True)`` or ``.to()`` end the fusion).
    """

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self.weight = self._concat([layer.weight for layer in layers])
        biases = [layer.bias for layer in layers]
        self.bias = None if any(b is None for b in biases) else self._concat(biases)
        self.pointers = self._pointers()

    @staticmethod
    def _concat(params: list[torch.Tensor]) -> torch.Tensor:
        if params[0].dim() == 2 and decode_weight_layout(params[0]) == "input-major":
            fused = torch.cat([p.detach().t() for p in params], dim=1)  # (in, sum of out)
            fused = huge_pages(fused).t()  # (sum of out, in)
        else:  # row-major weights (see decode_layout), or biases
            fused = huge_pages(torch.cat([p.detach() for p in params]))  # (sum of out, ...)
        start = 0
        for p in params:
            p.data = fused[start : start + p.shape[0]]
            start += p.shape[0]
        return fused

    def _pointers(self) -> tuple[int, ...]:
        params = [layer.weight for layer in self.layers]
        params += [layer.bias for layer in self.layers if layer.bias is not None]
        return tuple(p.data_ptr() for p in params)

    def intact(self) -> bool:
        """Whether every layer still holds its view of the fused tensors."""
        return self._pointers() == self.pointers

    def active(self) -> bool:
        """Whether the fused product may stand in for the layers in this call."""
        if torch.is_grad_enabled():
            return False
        if torch.compiler.is_compiling():
            return True  # data pointers cannot be traced; fuse again after replacing weights
        return self.intact()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)  # (..., sum of out_features)


class Linear(nn.Linear):
    """``nn.Linear`` whose product runs through :func:`llm_kernels.linear`: the same result
    (float32 rounding apart), from the native small-row kernel in CPU decode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _all_float_linears(*modules: nn.Module) -> bool:
    return all(isinstance(m, nn.Linear) for m in modules)


def decode_layout(module: nn.Module) -> None:
    """Store ``module``'s weight in the memory layout that decode reads fastest
    (:func:`llm_kernels.decode_weight_layout`): row-major for the native CPU kernel, else
    input-major (``[in, out]`` in memory: the same ``[out, in]`` tensor with transposed
    strides, an untransposed operand for BLAS); on 2 MiB pages where the OS has them
    (:func:`llm_kernels.huge_pages`). Values, shapes and names are unchanged. Anything but a
    float ``nn.Linear`` (a quantized layer) is left as it is."""
    if not isinstance(module, nn.Linear):
        return
    weight = module.weight
    if decode_weight_layout(weight) == "row-major":
        if not weight.is_contiguous() or not on_huge_pages(weight):
            weight.data = huge_pages(weight.detach().contiguous())
    elif weight.stride(0) != 1 or not on_huge_pages(weight):
        weight.data = huge_pages(weight.detach().t().contiguous()).t()


class Attention(nn.Module):
    """Grouped-query attention with optional q/k/v bias, RoPE, a window and sink tokens."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.q_proj = Linear(config.n_embd, q_dim, bias=config.qkv_bias)
        self.k_proj = Linear(config.n_embd, kv_dim, bias=config.qkv_bias)
        self.v_proj = Linear(config.n_embd, kv_dim, bias=config.qkv_bias)
        self.o_proj = Linear(q_dim, config.n_embd, bias=config.o_bias)
        self.qkv: FusedLinears | None = None  # set by Transformer.fuse_projections

    def fuse(self) -> None:
        """Compute q, k and v with one matrix product in inference (see :class:`FusedLinears`);
        nothing to do while an earlier fusion is intact, or when a projection is not a float
        ``nn.Linear`` (a quantized layer)."""
        if not _all_float_linears(self.q_proj, self.k_proj, self.v_proj):
            self.qkv = None
        elif self.qkv is None or not self.qkv.intact():
            self.qkv = FusedLinears([self.q_proj, self.k_proj, self.v_proj])

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        if self.qkv is not None and self.qkv.active():
            heads = self.qkv(x).view(B, T, H + 2 * Hkv, D).transpose(1, 2)  # (B, H+2Hkv, T, D)
            qk, v = heads[:, : H + Hkv], heads[:, H + Hkv :]
            if ctx.rope is not None and ctx.rope_keys is None:
                qk = apply_rope(qk, *ctx.rope)  # queries and new keys in one rotation
            q, k = qk[:, :H], qk[:, H:]  # (B, H, T, D), (B, Hkv, T, D)
            if ctx.rope is not None and ctx.rope_keys is not None:
                q = apply_rope(q, *ctx.rope)  # keys are rotated after the cache read
        else:
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            if ctx.rope is not None:
                q = apply_rope(q, *ctx.rope)
                if ctx.rope_keys is None:
                    k = apply_rope(k, *ctx.rope)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D)
        if ctx.rope_keys is not None:
            k = apply_rope(k, *ctx.rope_keys)
        y = attention(
            q,
            k,
            v,
            ctx.q_pos,
            ctx.k_pos,
            window=ctx.window,
            sink_tokens=ctx.sink_tokens,
            mask=ctx.mask,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """``gelu``: down(gelu(up(x))), GPT-style; ``swiglu``: down(silu(gate(x)) * up(x)), Llama."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gated = config.mlp == "swiglu"
        bias = not self.gated  # GPT-style MLPs carry biases, Llama's do not
        if self.gated:
            self.gate_proj = Linear(config.n_embd, config.ffn_dim, bias=False)
        self.up_proj = Linear(config.n_embd, config.ffn_dim, bias=bias)
        self.down_proj = Linear(config.ffn_dim, config.n_embd, bias=bias)
        self.gate_up: FusedLinears | None = None  # set by Transformer.fuse_projections

    def fuse(self) -> None:
        """Compute gate and up with one matrix product in inference (see :class:`FusedLinears`);
        nothing to do while an earlier fusion is intact, or for quantized layers."""
        if self.gated and not _all_float_linears(self.gate_proj, self.up_proj):
            self.gate_up = None
        elif self.gated and (self.gate_up is None or not self.gate_up.intact()):
            self.gate_up = FusedLinears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.active():
            gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., F) each
            return self.down_proj(F.silu(gate) * up)
        if self.gated:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))  # GPT-2's gelu


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self._drop(self.self_attn(self.input_layernorm(x), ctx))
        return x + self._drop(self.mlp(self.post_attention_layernorm(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # inference skips the dropout call, not just its work
        return self.dropout(x) if self.training and self.dropout.p else x


class TransformerBody(nn.Module):
    """Embedding, blocks and final norm (HF's ``model`` submodule)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.rotary_emb = RotaryEmbedding(config) if config.position_encoding == "rope" else None


class Transformer(nn.Module):
    """A decoder-only language model: ``model(tokens, cache=None, positions=None) -> logits``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = TransformerBody(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()
        self.to(DTYPES[config.dtype])

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) weights, zero biases, residual projections scaled by
        1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = (
                    1 / math.sqrt(2 * self.config.n_layer)
                    if name.endswith(("o_proj", "down_proj"))
                    else 1.0
                )
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype  # a norm: the embedding may be quantized

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def fuse_projections(self) -> Transformer:
        """Fuse each layer's q/k/v and gate/up projections for inference; returns ``self``.

        The weights move into one tensor per group (views keep their names, so memory, the
        state_dict and training are unchanged); forwards without gradients then run one matrix
        product per group instead of three (two), which saves time in decode. Every matrix
        the fusion touches, and o, down and the LM head, is stored in the layout and on the
        pages decode reads fastest (see :func:`decode_layout`; a tied head stays the embedding
        table's rows, on huge pages). Calling it again (another ``LLM`` on the
        same model) re-fuses only the layers whose weights were replaced since.
        """
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
            decode_layout(layer.self_attn.o_proj)
            decode_layout(layer.mlp.down_proj)
        if not self.config.tie_embeddings:  # a tied head is the embedding table: rows stay rows
            decode_layout(self.lm_head)
        elif isinstance(self.lm_head, nn.Linear) and not on_huge_pages(self.lm_head.weight):
            # the embedding table: read whole every token, as the head
            self.lm_head.weight.data = huge_pages(self.lm_head.weight.detach())
        return self

    def num_parameters(self) -> int:
        """Parameters counted once (a tied LM head is not counted twice)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(
        self,
        batch_size: int,
        capacity: int | None = None,
        kind: str = "static",
        *,
        dtype: torch.dtype | None = None,
        window: int | None = None,
        sink_tokens: int | None = None,
        position_mode: str | None = None,
    ) -> StaticKVCache | SinkKVCache:
        """A fresh KV cache for ``batch_size`` rows.

        ``kind="static"``: ``capacity`` slots (default ``kv_cache_capacity`` or ``max_seq_len``).
        ``kind="sink"``: a ring of ``sink_tokens + window`` slots (defaults from the config;
        ``capacity``, if given, must equal that sum); attention then follows the cache's window
        and sinks, so any model can stream with it. Raises ``ValueError`` for an unknown kind or
        a sink cache with no window.
        """
        cfg = self.config
        common = dict(
            n_layer=cfg.n_layer,
            batch_size=batch_size,
            n_kv_head=cfg.kv_heads,
            head_dim=cfg.head_dim,
            dtype=dtype or self.dtype,
            device=self.device,
        )
        if kind == "static":
            return StaticKVCache(
                capacity=capacity or cfg.kv_cache_capacity or cfg.max_seq_len, **common
            )
        if kind != "sink":
            raise ValueError(f"unknown cache kind {kind!r} (available: 'static', 'sink')")
        window = window or cfg.window_size
        if window is None:
            raise ValueError(
                "a sink cache needs a window: set window_size in the config or pass window="
            )
        sinks = cfg.sink_tokens if sink_tokens is None else sink_tokens
        if capacity is not None and capacity != sinks + window:
            raise ValueError(
                f"a sink cache has sink_tokens + window = {sinks + window} slots, not {capacity}"
            )
        return SinkKVCache(
            window=window,
            sink_tokens=sinks,
            position_mode=position_mode or cfg.position_mode,
            **common,
        )

    def hidden_states(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, n_embd]`` (the input of the LM head)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if positions is None:
            if cache is not None:
                positions = cache.next_positions(T)  # (B, T)
            else:
                positions = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
        elif positions.dim() == 1 and positions.shape[0] == T:
            positions = positions.expand(B, T)
        if positions.shape != (B, T):
            raise ValueError(f"positions {tuple(positions.shape)} do not match tokens {(B, T)}")
        if (
            T > 1
            and getattr(cache, "position_mode", None) == "cache"
            and cache.would_evict(positions)
        ):
            # re-indexed positions move with every token: feed an evicting chunk token by token
            steps = [
                self.hidden_states(tokens[:, t : t + 1], cache, positions[:, t : t + 1])
                for t in range(T)
            ]
            return torch.cat(steps, dim=1)
        ctx = self._attention_context(positions, cache)
        body = self.model
        x = body.embed_tokens(tokens)  # (B, T, C)
        if body.rotary_emb is None:
            x = x + sinusoidal_encoding(ctx.q_pos, self.config.n_embd).to(x.dtype)
        for layer in body.layers:
            x = layer(x, ctx)
        return body.norm(x)

    def _attention_context(
        self, positions: torch.Tensor, cache: KVCache | None
    ) -> AttentionContext:
        cfg = self.config
        q_pos, k_pos = positions, positions
        window, sinks, rope_on_read = cfg.window_size, cfg.sink_tokens, False
        if cache is not None:
            given = cache.append(positions)
            q_pos = positions if given is None else given
            k_pos = cache.key_positions  # (B, S)
            window = getattr(cache, "window", window)
            sinks = getattr(cache, "sink_tokens", sinks)
            rope_on_read = getattr(cache, "rope_on_read", False)
        rope = rope_keys = None
        rotary = self.model.rotary_emb
        if rotary is not None:
            seq_len = int(positions.max()) + 1 if rotary.dynamic else None
            rope = rotary(q_pos, seq_len)
            if rope_on_read:
                rope_keys = rotary(k_pos, seq_len)
        mask = attention_mask(q_pos, k_pos, window=window, sink_tokens=sinks)  # (B|1, 1, T, S)
        return AttentionContext(rope, rope_keys, q_pos, k_pos, window, sinks, cache, mask)

    def prefill(
        self, tokens: torch.Tensor, cache: KVCache, *, chunk_size: int = 512
    ) -> torch.Tensor:
        """Feed ``tokens`` (``[B, T]``) into ``cache`` in chunks; logits of the last token ``[B, V]``.

        Memory stays bounded by the chunk and the cache, whatever ``T`` is; the LM head runs on
        the last position only.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        hidden = None
        for start in range(0, tokens.shape[1], chunk_size):
            hidden = self.hidden_states(tokens[:, start : start + chunk_size], cache)
        if hidden is None:
            raise ValueError("prefill needs at least one token")
        return self.lm_head(hidden[:, -1])

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        *,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for ``tokens`` (``[B, T]``).

        ``positions`` (``[B, T]`` or ``[T]``) default to ``0..T-1``, or, with a ``cache``, to
        the positions after the last one the cache holds. ``logits_to_keep=n > 0`` runs the LM
        head on the last ``n`` positions only (``[B, n, vocab_size]``), as HF's argument of that
        name: a prompt's prefill needs the last row alone. Raises ``ValueError`` on bad shapes
        or a negative ``logits_to_keep``, and :class:`~llm_core.errors.CacheFullError` when the
        cache has no room.
        """
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
        hidden = self.hidden_states(tokens, cache, positions)  # (B, T, C)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, n, C)
        return self.lm_head(hidden)
