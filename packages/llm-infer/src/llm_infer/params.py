"""``SamplingParams``: how to pick each next token and when to stop; the one table of ranges.

A pydantic model (no torch), so that the server's request schema and the REPL's ``/set``
take their fields and bounds from it. A bad value raises :class:`SamplingError`, whose
``param`` names the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from llm_infer.errors import SamplingError

DEFAULT_MAX_TOKENS = 256
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class SamplingParams(BaseModel):
    """Sampling parameters; names and ranges follow the OpenAI API (plus vLLM's extras).

    ``top_k=0``, ``top_p=1`` and ``min_p=0`` switch their filter off; ``repetition_penalty``
    (HF's, over the prompt and the output) is off at 1. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, over the output only) are off at 0. ``temperature=0``
    (or below :data:`GREEDY_BELOW`) is greedy. ``logprobs=True`` reports the chosen token's
    log-probability under the model's raw distribution, with the ``top_logprobs`` most
    likely alternatives. ``stop`` may be given as one string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_tokens: int | None = Field(None, ge=1)  # None: up to 256, within the context left
    min_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100)  # logits / p and * p stay finite
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Mapping[int, Annotated[float, Field(ge=-100, le=100)]] = Field(default_factory=dict)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # torch.Generator's range
    stop: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    stop_token_ids: tuple[Annotated[int, Field(ge=0)], ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> SamplingParams:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise PydanticCustomError(
                "sampling",
                "min_tokens must be at most max_tokens={max_tokens}, got {min_tokens}",
                {
                    "param": "min_tokens",
                    "max_tokens": self.max_tokens,
                    "min_tokens": self.min_tokens,
                },
            )
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError(
                "sampling", "top_logprobs needs logprobs=True", {"param": "top_logprobs"}
            )
        return self

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments (None means the default); values may be strings to
        parse (``"0.7"``), as the REPL's ``/set`` gives them.

        Raises :class:`SamplingError` naming the parameter (``.param``) and its range.
        """
        given = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise sampling_error(exc, given) from None

    @property
    def greedy(self) -> bool:
        """Temperatures below :data:`GREEDY_BELOW` are greedy, as in vLLM: dividing logits by
        a tinier one overflows them to inf and the distribution to NaN."""
        return self.temperature < GREEDY_BELOW

    def validate_for(self, vocab_size: int) -> None:
        """Check the token ids named in ``logit_bias`` and ``stop_token_ids`` against a
        vocabulary of ``vocab_size`` ids; raises :class:`SamplingError`."""
        for name, ids in (("logit_bias", self.logit_bias), ("stop_token_ids", self.stop_token_ids)):
            bad = next((i for i in ids if not 0 <= i < vocab_size), None)
            if bad is not None:
                raise SamplingError(
                    f"{name} names token {bad}, outside the vocabulary [0, {vocab_size})",
                    param=name,
                )


def bounds(name: str) -> str:
    """The allowed values of parameter ``name`` in words, from the table: ``"a number in
    [0, 2]"``, ``"an integer >= 1"``, ``"true or false"``, ..."""
    field = SamplingParams.model_fields[name]
    kind = {float: "a number ", int: "an integer "}.get(_base(field.annotation), "")
    low = high = None
    low_open = high_open = False
    for m in field.metadata:
        if getattr(m, "ge", None) is not None:
            low = m.ge
        if getattr(m, "gt", None) is not None:
            low, low_open = m.gt, True
        if getattr(m, "le", None) is not None:
            high = m.le
        if getattr(m, "lt", None) is not None:
            high, high_open = m.lt, True
    if low is not None and high is not None:
        return f"{kind}in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind}{'>' if low_open else '>='} {low}"
    if field.annotation is bool:
        return "true or false"
    return kind.strip() or f"of type {field.annotation}"


def _base(annotation: Any) -> Any:
    """``int`` for ``int | None``; the annotation itself otherwise."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else annotation


def sampling_error(exc: ValidationError, given: Mapping[str, Any]) -> SamplingError:
    """The first problem of a pydantic ``ValidationError`` as a one-line :class:`SamplingError`
    naming the parameter."""
    error = exc.errors()[0]
    loc = error["loc"]
    ctx = error.get("ctx") or {}
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(SamplingParams.model_fields))
        return SamplingError(
            f"unknown sampling parameter {loc[0]!r} (known: {known})", param=str(loc[0])
        )
    if error["type"] == "sampling":
        return SamplingError(error["msg"], param=ctx["param"])
    name = str(loc[0]) if loc else "sampling parameters"
    value = given.get(name, error.get("input"))
    if name == "logit_bias" and loc[-1] == "[key]":
        return SamplingError(
            f"logit_bias keys must be token ids (integers), got {value!r}", param=name
        )
    if name in ("logit_bias", "stop", "stop_token_ids") and len(loc) > 1:
        want = {
            "logit_bias": "in [-100, 100] for each token",
            "stop": "non-empty strings",
            "stop_token_ids": "token ids >= 0",
        }[name]
        return SamplingError(f"{name} must be {want}, got {value!r}", param=name)
    return SamplingError(f"{name} must be {bounds(name)}, got {value!r}", param=name)


def field_type(name: str) -> Any:
    """Parameter ``name``'s type with its bounds (``Annotated[float, Ge(0), Le(2)]``), for
    other pydantic models (the server's request schema) to declare the same field."""
    field = SamplingParams.model_fields[name]
    if not field.metadata:
        return field.annotation
    return Annotated[field.annotation, *field.metadata]
