"""``RunConfig``: one training run, from a YAML file (see ``configs/train-*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from llm_core import ConfigError, ModelConfig
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from llm_train.errors import RunConfigError


class RunConfig(BaseModel):
    """Every setting of a run. ``batch_size`` is the global batch in sequences per optimizer
    step; it is split over processes and micro-batches of ``micro_batch_size`` (gradient
    accumulation makes up the rest), so the same config gives the same run on any world size.
    The model's ``vocab_size`` is taken from the prepared data's tokenizer."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: ModelConfig | None = None  # pretrain: the architecture (or model_config: a file)
    model_config_file: str | None = None  # a ModelConfig YAML/JSON/TOML file instead of model:
    init_from: str | None = None  # finetune: a checkpoint directory to start from
    data: str  # a directory written by `llm-train prepare`
    out_dir: str
    seed: int = 0
    seq_len: int = 256
    batch_size: int = 8
    micro_batch_size: int | None = None  # None: batch_size / world size (no accumulation)
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and checkpoint) once training took this long
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the cosine schedule's floor, as a fraction of lr
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0  # None: no clipping
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast, fp32 master weights
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used under torchrun (WORLD_SIZE > 1)
    eval_every: int = 100
    eval_windows: int = 64  # validation windows per evaluation
    early_stopping_patience: int | None = None  # evaluations without improvement; None: never
    early_stopping_min_delta: float = 0.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 1  # metrics lines (every step by default)
    peak_tflops: float | None = None  # MFU denominator; None: measured (CPU) or known (GPU)
    compile: bool = False  # torch.compile the model

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if (self.model is None) == (self.model_config_file is None) and self.init_from is None:
            raise ValueError("give exactly one of model, model_config_file or init_from")
        for name in ("seq_len", "batch_size", "max_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {self.micro_batch_size}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("lr must be positive and warmup_steps >= 0")
        return self

    def micro_batches(self, world_size: int) -> tuple[int, int]:
        """``(micro_batch_size, accumulation steps)`` per process for ``world_size`` processes.

        Raises :class:`RunConfigError` when the global batch does not split evenly.
        """
        if self.batch_size % world_size:
            raise RunConfigError(
                f"batch_size {self.batch_size} is not divisible by the world size {world_size}"
            )
        per_rank = self.batch_size // world_size
        micro = self.micro_batch_size or per_rank
        if per_rank % micro:
            raise RunConfigError(
                f"batch_size / world size = {per_rank} is not divisible by micro_batch_size {micro}"
            )
        return micro, per_rank // micro

    def resolved_model(self, base: Path) -> ModelConfig | None:
        """The model config (``model:`` or ``model_config_file``, relative to ``base``)."""
        if self.model is not None:
            return self.model
        if self.model_config_file is None:
            return None
        path = Path(self.model_config_file)
        try:
            return ModelConfig.from_file(path if path.is_absolute() else base / path)
        except ConfigError as exc:
            raise RunConfigError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """Load a YAML run config; ``overrides`` replace its fields (None values are ignored).

        Relative ``data``, ``out_dir``, ``init_from`` and ``model_config_file`` stay relative to
        the working directory. Raises :class:`RunConfigError` naming the file and field.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunConfigError(f"{path}: no such run config") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunConfigError(f"{path}: cannot read: {first}") from None
        if not isinstance(data, dict):
            raise RunConfigError(f"{path}: expected a mapping of settings")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                parts.append(f"{loc}: {msg.removeprefix('Value error, ')}" if loc else msg)
            raise RunConfigError(f"{path}: {'; '.join(parts)}") from None
