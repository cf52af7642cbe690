"""Import of HF transformers checkpoints: Llama, Mistral and Qwen2 ``config.json`` to ModelConfig.

Module names already match HF's, so tensor names map to themselves. Configs written by
transformers 4.x (``rope_theta``, ``rope_scaling``) and 5.x (``rope_parameters``) are both read;
anything this model cannot reproduce exactly is refused by name rather than loaded wrong.
"""

from __future__ import annotations

from typing import Any

from llm_core.config import ModelConfig
from llm_core.errors import CheckpointError, ConfigError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
HF_ROPE_TYPES = {
    "default": None,
    "linear": "linear",
    "dynamic": "dynamic_ntk",
    "yarn": "yarn",
    "llama3": "llama3",
}
ROPE_KEYS = (
    "factor", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate",
    "low_freq_factor", "high_freq_factor",
)  # fmt: skip


def hf_config_to_model_config(raw: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Translate an HF ``config.json`` mapping; raises :class:`CheckpointError` naming what is
    unsupported (architecture, rope type, activation, ...)."""
    family = _family(raw, source)

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: {what} is not supported")

    if raw.get("hidden_act", "silu") != "silu":
        raise refuse(f"hidden_act {raw['hidden_act']!r} (only 'silu')")
    if raw.get("mlp_bias"):
        raise refuse("mlp_bias=true")
    window = _window(raw, family)
    if window == -1:
        raise refuse("a mix of sliding-window and full-attention layers")
    theta, rope_type, rope_params = _rope(raw)
    if rope_type not in HF_ROPE_TYPES:
        raise refuse(f"rope type {rope_type!r} (supported: {', '.join(HF_ROPE_TYPES)})")

    try:
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        fields: dict[str, Any] = {
            "vocab_size": int(raw["vocab_size"]),
            "n_embd": hidden,
            "n_layer": int(raw["num_hidden_layers"]),
            "n_head": heads,
            "n_kv_head": int(raw.get("num_key_value_heads") or heads),
            "intermediate_size": int(raw["intermediate_size"]),
            "max_seq_len": int(raw.get("max_position_embeddings", 2048)),
        }
    except KeyError as exc:
        raise CheckpointError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid field value ({exc})") from None
    head_dim = raw.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        fields["head_size"] = int(head_dim)
    bias = bool(raw.get("attention_bias", False))
    fields.update(
        rope_base=float(theta),
        position_encoding="rope",
        norm="rmsnorm",
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2" or bias,
        o_bias=bias,
        dtype=_dtype(raw),
    )
    if window is not None:
        fields["window_size"] = window
    if HF_ROPE_TYPES[rope_type] is not None:
        fields["rope_scaling"] = {"type": HF_ROPE_TYPES[rope_type]} | {
            k: rope_params[k] for k in ROPE_KEYS if rope_params.get(k) is not None
        }
        if rope_type in ("yarn", "llama3"):  # measured from the pre-training context
            original = rope_params.get("original_max_position_embeddings")
            fields["original_max_seq_len"] = int(original or fields["max_seq_len"])
        else:  # linear and dynamic scale from max_position_embeddings itself
            fields["original_max_seq_len"] = fields["max_seq_len"]
    try:
        return ModelConfig.from_dict(fields, source=source)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def hf_tensor_name(name: str) -> str | None:
    """Our parameter name for an HF tensor name, or None for tensors that are not weights."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return name


def _family(raw: dict[str, Any], source: str) -> str:
    architectures = raw.get("architectures") or []
    for arch in architectures:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    if architectures:
        raise CheckpointError(
            f"{source}: architecture {architectures[0]!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    model_type = raw.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES.values():
        return str(model_type)
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported")


def _rope(raw: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """``(theta, rope_type, parameters)`` from a 4.x (``rope_theta``/``rope_scaling``) or a 5.x
    (``rope_parameters``) config."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = raw.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    return float(theta), str(rope_type), params


def _window(raw: dict[str, Any], family: str) -> int | None:
    """The sliding window every layer uses, None for full attention, -1 for a per-layer mix."""
    window = raw.get("sliding_window")
    if family == "mistral":
        return None if window is None else int(window)
    if family != "qwen2" or not raw.get("use_sliding_window") or window is None:
        return None
    n_layer = int(raw.get("num_hidden_layers", 0))
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if i >= int(raw.get("max_window_layers", 0)) else "full_attention"
        for i in range(n_layer)
    ]
    if all(t == "sliding_attention" for t in layer_types):
        return int(window)
    return None if all(t == "full_attention" for t in layer_types) else -1


def _dtype(raw: dict[str, Any]) -> str:
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"
