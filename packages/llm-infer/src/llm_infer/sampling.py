"""Sampling parameters and the logit pipeline: penalties, bias, temperature, top-k/top-p/min-p.

The order follows HF transformers: repetition penalty, presence/frequency penalties, logit
bias, (min_tokens ban), temperature, then the top-k, top-p and min-p filters. Greedy decoding
is ``temperature=0`` (or below ``GREEDY_BELOW``): the argmax of the processed logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from llm_infer.errors import SamplingError

NEG_INF = float("-inf")
DEFAULT_MAX_TOKENS = 256
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop; names follow the OpenAI API.

    ``top_k=0``, ``top_p=1`` and ``min_p=0`` switch their filter off; ``repetition_penalty``
    (HF's, over the prompt and the output) is off at 1. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, over the output only) are off at 0. ``logprobs=True``
    reports the chosen token's log-probability under the model's raw distribution, with the
    ``top_logprobs`` most likely alternatives.
    """

    max_tokens: int | None = None  # None: up to DEFAULT_MAX_TOKENS, within the context left
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments; ``stop`` may be a string or a list.

        Raises :class:`SamplingError` naming an unknown keyword or an invalid value.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise SamplingError(
                f"unknown sampling parameter {unknown[0]!r} (known: {', '.join(sorted(names))})"
            )
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = (kwargs["stop"],)
        for key in ("stop", "stop_token_ids"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
            elif key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if kwargs.get("logit_bias") is None:
            kwargs.pop("logit_bias", None)
        elif "logit_bias" in kwargs:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in kwargs["logit_bias"].items()}
        params = cls(**kwargs)
        params.validate()
        return params

    @property
    def greedy(self) -> bool:
        """Temperatures below :data:`GREEDY_BELOW` are greedy, as in vLLM: dividing logits by
        a tinier one overflows them to inf and the distribution to NaN."""
        return self.temperature < GREEDY_BELOW

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise :class:`SamplingError` naming the first parameter out of its range."""

        def bad(name: str, want: str) -> SamplingError:
            return SamplingError(f"{name} must be {want}, got {getattr(self, name)!r}")

        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise bad("max_tokens", "an integer >= 1")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", "an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"at most max_tokens={self.max_tokens}")
        if not _finite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a number >= 0 (0 means greedy)")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 means off)")
        if not _finite(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a number > 0 (1 means off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                raise bad(name, "in [-2, 2]")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= 20:
            raise bad("top_logprobs", "an integer in [0, 20]")
        if self.top_logprobs and not self.logprobs:
            raise SamplingError("top_logprobs needs logprobs=True")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "an integer")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "non-empty strings")
        for token_id, bias in self.logit_bias.items():
            if vocab_size is not None and not 0 <= token_id < vocab_size:
                raise SamplingError(
                    f"logit_bias names token {token_id}, outside the vocabulary [0, {vocab_size})"
                )
            if not _finite(bias) or not -100 <= bias <= 100:
                raise SamplingError(
                    f"logit_bias of token {token_id} must be in [-100, 100], got {bias}"
                )
        if vocab_size is not None:
            for token_id in self.stop_token_ids:
                if not 0 <= token_id < vocab_size:
                    raise SamplingError(
                        f"stop_token_ids has {token_id}, outside the vocabulary [0, {vocab_size})"
                    )


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# -- the logit pipeline (each step a small function of [V] logits) --------------------------


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """HF's rule on tokens in ``seen`` (ids ``[N]``): positive logits / penalty, negative * penalty."""
    picked = logits[seen]  # (N,)
    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's rule: ``logit - presence * (count > 0) - frequency * count`` (``counts`` ``[V]``)."""
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits (ties at the k-th value kept), the rest to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probability adds up to ``p`` (nucleus sampling).

    A token is kept when the mass of the tokens more likely than it is below ``p``, so the
    token that crosses ``p`` is kept and at least one token always is.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)  # (V,)
    probs = torch.softmax(sorted_logits, dim=-1)  # (V,)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (V,)
    drop = torch.zeros_like(logits, dtype=torch.bool)
    drop[order] = mass_before >= p
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)  # (V,)
    return logits.masked_fill(probs < min_p * probs.max(), NEG_INF)


def argmax(logits: torch.Tensor) -> int:
    """The index of the largest of ``logits`` (``[V]``), the first one on a tie (a NaN counts
    as the largest, as in torch). On CPU through numpy: torch's generic reduction takes about
    60 us for a 32k vocabulary on this machine's cores, numpy's about 3 us."""
    if logits.is_cpu and logits.dtype in (torch.float32, torch.float64) and logits.dim() == 1:
        return int(logits.detach().numpy().argmax())
    return int(logits.argmax())


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    banned: Sequence[int] = (),
) -> torch.Tensor:
    """The logits (``[V]``, float32) that the next token is drawn from; ``-inf`` = filtered out.

    ``seen`` holds the ids of the prompt and output (for the repetition penalty), ``counts``
    the output's count of each id ``[V]`` (presence and frequency penalties), ``banned`` ids
    that may not come yet (stop tokens before ``min_tokens``).
    """
    edits = (
        params.repetition_penalty != 1.0
        or params.presence_penalty
        or params.frequency_penalty
        or params.logit_bias
        or banned
    )
    if params.greedy and not edits:
        return logits.float()  # nothing to change: no copy
    logits = logits.float().clone()  # (V,)
    if params.repetition_penalty != 1.0 and seen is not None and seen.numel():
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and counts is not None:
        logits = apply_presence_frequency(
            logits, counts, params.presence_penalty, params.frequency_penalty
        )
    for token_id, bias in params.logit_bias.items():
        logits[token_id] += bias
    if banned:
        logits[list(banned)] = NEG_INF
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def probabilities(logits: torch.Tensor, params: SamplingParams, **state: Any) -> torch.Tensor:
    """The distribution ``[V]`` that :func:`sample` draws from (one-hot at the argmax if greedy)."""
    processed = process_logits(logits, params, **state)
    if params.greedy:
        return torch.nn.functional.one_hot(
            torch.tensor(argmax(processed)), processed.shape[-1]
        ).float()
    return torch.softmax(processed, dim=-1)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    **state: Any,
) -> int:
    """Draw the next token id from ``logits`` (``[V]``) under ``params``."""
    processed = process_logits(logits, params, **state)  # (V,)
    if params.greedy:
        return argmax(processed)
    probs = torch.softmax(processed, dim=-1)  # (V,)
    return int(torch.multinomial(probs, 1, generator=generator))
