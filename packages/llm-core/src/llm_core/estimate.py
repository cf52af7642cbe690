"""Memory estimates from a config alone: weights, KV cache and activations, in bytes."""

from __future__ import annotations

from dataclasses import dataclass

from llm_core.config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
POSITION_BYTES = 8  # each cache slot records its token position as an int64


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to run a model over ``context`` tokens for ``batch`` sequences."""

    context: int
    batch: int
    weights: int
    kv_cache: int  # a static cache of `context` slots
    kv_cache_sink: int | None  # a sink cache of sink_tokens + window slots (None: no window)
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


def parameter_count(config: ModelConfig) -> int:
    """Parameters of :class:`~llm_core.model.Transformer` built from ``config`` (tied head once)."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    q_dim, kv_dim, ffn = (
        config.n_head * config.head_dim,
        config.kv_heads * config.head_dim,
        config.ffn_dim,
    )
    norm = C if config.norm == "rmsnorm" else 2 * C
    attn = C * q_dim + 2 * C * kv_dim + q_dim * C
    attn += (q_dim + 2 * kv_dim) if config.qkv_bias else 0
    attn += C if config.o_bias else 0
    mlp = 3 * C * ffn if config.mlp == "swiglu" else 2 * C * ffn + ffn + C
    head = 0 if config.tie_embeddings else V * C
    return V * C + L * (2 * norm + attn + mlp) + norm + head


def kv_cache_bytes(
    config: ModelConfig, capacity: int, batch: int = 1, dtype: str = "bfloat16"
) -> int:
    """Bytes of a :class:`~llm_core.cache.StaticKVCache` of ``capacity`` slots: keys, values and
    the per-slot positions, exactly as allocated."""
    kv = 2 * config.n_layer * batch * config.kv_heads * capacity * config.head_dim
    return kv * DTYPE_BYTES[dtype] + batch * capacity * POSITION_BYTES


def activation_bytes(
    config: ModelConfig, tokens: int, batch: int = 1, dtype: str = "bfloat16"
) -> int:
    """Peak transient bytes of one inference forward over ``tokens`` tokens, layer by layer.

    Counts one layer's live tensors (residual stream, normed input, q/k/v, attention output,
    the MLP's hidden activations) plus the float32 logits of the last position. Attention
    scores are not counted: the kernels never materialise the ``T x T`` matrix.
    """
    C = config.n_embd
    q_dim, kv_dim = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    mlp_hidden = (3 if config.mlp == "swiglu" else 1) * config.ffn_dim
    per_token = 2 * C + q_dim + 2 * kv_dim + q_dim + mlp_hidden
    return batch * tokens * per_token * DTYPE_BYTES[dtype] + batch * config.vocab_size * 4


def estimate_memory(
    config: ModelConfig, context: int, batch: int = 1, dtype: str = "bfloat16"
) -> MemoryEstimate:
    """Weights, KV cache (static, ``context`` slots; and a sink cache's ``sink_tokens + window``
    slots when the config has a window) and activation bytes. Raises ``ValueError``
    for a non-positive context or batch, or an unknown dtype."""
    if context <= 0 or batch <= 0:
        raise ValueError(f"context and batch must be positive, got {context} and {batch}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_BYTES)})")
    return MemoryEstimate(
        context=context,
        batch=batch,
        weights=parameter_count(config) * DTYPE_BYTES[dtype],
        kv_cache=kv_cache_bytes(config, context, batch, dtype),
        kv_cache_sink=(
            None
            if config.window_size is None
            else kv_cache_bytes(config, config.sink_tokens + config.window_size, batch, dtype)
        ),
        activations=activation_bytes(config, context, batch, dtype),
    )
