"""``ModelConfig``: every architecture switch of the Transformer, validated, from YAML/JSON/TOML."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from llm_core.errors import ConfigError

DType = Literal["float32", "bfloat16", "float16"]


class RopeScaling(BaseModel):
    """How RoPE reaches positions past the training length (``original_max_seq_len``).

    - ``linear``: positions divided by ``factor`` (position interpolation).
    - ``ntk``: NTK-aware, ``base' = base * s^(d/(d-2))`` with ``s = factor``.
    - ``dynamic_ntk``: NTK with ``s`` recomputed from the current length ``L`` as HF does:
      ``base * ((factor * L / L0) - (factor - 1))^(d/(d-2))``, unchanged while ``L <= L0``.
    - ``yarn``: YaRN's per-frequency blend of interpolation and extrapolation, with its
      attention scaling (``beta_fast``, ``beta_slow``, ``attention_factor``, ``mscale*``).
    - ``llama3``: Llama 3.1's smoothed per-wavelength scaling (``low/high_freq_factor``).

    ``factor`` defaults to ``max_seq_len / original_max_seq_len``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["linear", "ntk", "dynamic_ntk", "yarn", "llama3"]
    factor: float | None = None
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn; None: 0.1 * ln(factor) + 1
    mscale: float | None = None  # yarn (DeepSeek-style attention factor)
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3

    @model_validator(mode="after")
    def _check(self) -> RopeScaling:
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"rope_scaling.factor must be positive, got {self.factor}")
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("rope_scaling.high_freq_factor must exceed low_freq_factor")
        return self


class ModelConfig(BaseModel):
    """Shape and architecture of a decoder-only Transformer.

    GPT-style and Llama-style models are the same class with different switches: ``mlp``
    (``gelu`` or ``swiglu``), ``norm``, ``position_encoding``, ``tie_embeddings`` and
    ``qkv_bias`` (Qwen2). Derived values (``head_dim``, ``kv_groups``) are properties.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = 50257
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: same as n_head (multi-head attention)
    head_size: int | None = None  # None: n_embd // n_head; HF's explicit head_dim otherwise
    intermediate_size: int | None = (
        None  # None: 4 * n_embd for gelu, Llama's 8/3 rounding for swiglu
    )
    max_seq_len: int = 2048
    original_max_seq_len: int | None = None  # training context; None: max_seq_len
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    position_encoding: Literal["rope", "sinusoidal"] = "rope"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2: bias on q/k/v projections only
    o_bias: bool = False  # Llama's attention_bias: bias on o_proj as well
    dropout: float = 0.0  # residual dropout, applied in training only
    window_size: int | None = None  # sliding-window attention; None: full causal attention
    sink_tokens: int = 0  # keys at positions < sink_tokens are always visible (with a window)
    kv_cache_capacity: int | None = None  # default slots of a static cache; None: max_seq_len
    position_mode: Literal["absolute", "cache"] = "absolute"  # how a sink cache positions keys
    init_std: float = 0.02
    dtype: DType = "float32"

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        positive = ("vocab_size", "n_embd", "n_layer", "n_head", "max_seq_len")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None:
            if self.n_kv_head <= 0:
                raise ValueError(f"n_kv_head must be positive, got {self.n_kv_head}")
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"
                )
        if self.head_dim % 2 and self.position_encoding == "rope":
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rope")
        if self.n_embd % 2 and self.position_encoding == "sinusoidal":
            raise ValueError(f"n_embd ({self.n_embd}) must be even for sinusoidal encodings")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ValueError(f"intermediate_size must be positive, got {self.intermediate_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 0:
            raise ValueError(f"rope_base must be positive, got {self.rope_base}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.window_size is not None and self.window_size <= 0:
            raise ValueError(f"window_size must be positive, got {self.window_size}")
        if self.sink_tokens < 0:
            raise ValueError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.sink_tokens and self.window_size is None:
            raise ValueError("sink_tokens needs window_size: sinks only matter with a window")
        if self.original_max_seq_len is not None and self.original_max_seq_len <= 0:
            raise ValueError(
                f"original_max_seq_len must be positive, got {self.original_max_seq_len}"
            )
        if self.kv_cache_capacity is not None and self.kv_cache_capacity <= 0:
            raise ValueError(f"kv_cache_capacity must be positive, got {self.kv_cache_capacity}")
        if self.rope_scaling is not None and self.position_encoding != "rope":
            raise ValueError("rope_scaling needs position_encoding 'rope'")
        return self

    # -- derived values ------------------------------------------------------------------

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_kv_head``, or ``n_head`` when unset)."""
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def training_seq_len(self) -> int:
        """The context the model was trained at (``original_max_seq_len`` or ``max_seq_len``)."""
        return self.original_max_seq_len or self.max_seq_len

    @property
    def rope_factor(self) -> float:
        """The context scale of ``rope_scaling``: its ``factor``, or ``max_seq_len / L0``."""
        if self.rope_scaling is not None and self.rope_scaling.factor is not None:
            return self.rope_scaling.factor
        return self.max_seq_len / self.training_seq_len

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the MLP."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.mlp == "gelu":
            return 4 * self.n_embd
        hidden = int(2 * (4 * self.n_embd) / 3)  # SwiGLU keeps the parameter count of a 4x MLP
        return 256 * ((hidden + 255) // 256)  # rounded up to a multiple of 256, as Llama does

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ModelConfig:
        """Validate a mapping; raises :class:`ConfigError` naming the field and the problem."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Load from ``.yaml``/``.yml``, ``.json`` or ``.toml``.

        A file may hold the fields at the top level or under a ``model:`` key (so run configs
        can carry the model beside other sections). Raises :class:`ConfigError`.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        suffix = path.suffix.lower()
        try:
            if suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text)
            elif suffix == ".json":
                data = json.loads(text)
            elif suffix == ".toml":
                data = tomllib.loads(text)
            else:
                raise ConfigError(
                    f"{path}: unknown config format {suffix!r} (use .yaml, .json or .toml)"
                )
        except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {first}") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data = data["model"]
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return self.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    """One line naming each failing field: ``n_head: ...; dropout: ...``."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(parts)
