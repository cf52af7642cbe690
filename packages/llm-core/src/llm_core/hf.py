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
SUPPORTED_ROPE_TYPES = ("default",)


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
    if family == "qwen2" and raw.get("use_sliding_window"):
        raise refuse("use_sliding_window=true with per-layer windows")
    theta, rope_type = _rope(raw)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise refuse(f"rope type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")

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
    if family == "mistral" and raw.get("sliding_window") is not None:
        fields["window_size"] = int(raw["sliding_window"])
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


def _rope(raw: dict[str, Any]) -> tuple[float, str]:
    """``(theta, rope_type)`` from a 4.x (``rope_theta``/``rope_scaling``) or 5.x config."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    theta = raw.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = (
        params.get("rope_type")
        or params.get("type")
        or scaling.get("rope_type")
        or scaling.get("type")
        or "default"
    )
    return float(theta), str(rope_type)


def _dtype(raw: dict[str, Any]) -> str:
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"
