"""The generation core: prefill, one decode step, and the per-request :class:`Generation`.

Every front end generates through these few functions, in the manner of gpt-fast:
:func:`prefill` runs a prompt into a cache, a :class:`DecodeStep` runs one token per row (the
one hot function: compiled where that is faster), :class:`Generation` picks each token from
the logits, turns tokens into text and decides when to stop, and :func:`run` strings them
together for one sequence. :class:`~llm_infer.llm.LLM` (one request),
:class:`~llm_infer.session.Session` (a conversation holding its cache) and the
:class:`~llm_infer.engine.Engine`'s runner (a batch) are thin callers, so every front end
samples, streams and stops the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from llm_infer.compiled import CompiledDecoder
from llm_infer.native_step import NativeDecoder
from llm_infer.protocols import CausalLM, Tokenizer
from llm_infer.sampling import SamplingParams, argmax, draw, process_logits

FinishReason = Literal["stop", "length", "cancelled"]
PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the activations of a long prompt
# Below this many parameters a model decodes eagerly by default: its steps take about a
# millisecond already, and a compilation (tens of seconds on a few cores) would not pay back
# in an interactive session. (Llama-style models take the native step first, see DecodeStep.)
COMPILE_MIN_PARAMETERS = 20_000_000

log = logging.getLogger("llm_infer")


def prefill(
    model: CausalLM,
    tokens: torch.Tensor,
    cache: Any,
    positions: torch.Tensor,
    chunk: int = PREFILL_CHUNK,
) -> torch.Tensor:
    """Run ``tokens`` (``[B, T]``) at ``positions`` (``[B, T]``) into ``cache``, ``chunk``
    tokens per forward; return the logits of the last position ``[B, V]``."""
    for start in range(0, tokens.shape[1], chunk):
        part = slice(start, start + chunk)
        logits = model.forward(
            tokens[:, part], cache, positions[:, part], logits_to_keep=1
        )  # (B, 1, V)
    return logits[:, -1]  # (B, V)


def decode_step(
    model: CausalLM, token: torch.Tensor, cache: Any, position: torch.Tensor
) -> torch.Tensor:
    """One eager decode step: ``token`` and ``position`` ``[B, 1]`` in, next-token logits
    ``[B, V]`` out."""
    return model.forward(token, cache, position)[:, -1]  # (B, V)


def compiles_by_default(model: CausalLM) -> bool:
    """Whether a :class:`DecodeStep` compiles when not told: a model of at least
    :data:`COMPILE_MIN_PARAMETERS` parameters (measured faster than the eager step on CPU
    float32 for the llama-125m shape, see docs/benchmarks.md)."""
    parameters = getattr(model, "parameters", None)
    if parameters is None:
        return False
    return sum(p.numel() for p in parameters()) >= COMPILE_MIN_PARAMETERS


class DecodeStep:
    """``step(token, position, cache) -> logits [B, V]``: one token per row.

    ``compile=None`` (the default): on a static cache, the native step (a
    :class:`~llm_infer.native_step.NativeDecoder`: one llm-kernels call per layer) where it
    serves the model, else the compiled step where :func:`compiles_by_default` says so.
    ``compile=True``: the compiled step (a :class:`~llm_infer.compiled.CompiledDecoder`) on
    static caches. ``compile=False``: the modules, eagerly. Other caches always run eagerly.

    The first compiled call (and the first for each new cache capacity) compiles, which takes
    tens of seconds on a few CPU cores; it is announced on the ``llm_infer`` logger (INFO) so
    that front ends can say so instead of waiting silently.
    """

    def __init__(self, model: CausalLM, *, compile: bool | None = None) -> None:
        self.model = model
        self._compile = compile
        self.native = NativeDecoder.for_model(model) if compile is None else None
        if compile is None:
            compile = self.native is None and compiles_by_default(model)
        self.compiled = CompiledDecoder(model) if compile else None
        self._announced: set[int] = set()

    @property
    def kind(self) -> str:
        """Which step runs on a static cache: ``"native"``, ``"compiled"`` or ``"eager"``."""
        if self.native is not None:
            return "native"
        return "compiled" if self.compiled is not None else "eager"

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        if self.native is not None and self.native.serves(cache):
            return self.native(token, position, cache)  # (B, V)
        if self.compiled is None or getattr(cache, "kind", None) != "static":
            return decode_step(self.model, token, cache, position)  # (B, V)
        capacity = cache.capacity
        if capacity not in self._announced:
            self._announced.add(capacity)
            log.info(
                "compiling the decode step for a %d-token cache (once per size; "
                "tens of seconds on a few CPU cores)",
                capacity,
            )
        return self.compiled(token, position, cache)  # (B, V)

    def reset(self) -> None:
        """Forget the compiled step and the native step's weights (after the model's weights
        changed)."""
        if self._compile is None:
            self.native = NativeDecoder.for_model(self.model)
        if self.compiled is not None:
            self.compiled.reset()
            self._announced.clear()


def run(
    model: CausalLM, cache: Any, generation: Generation, start: int, step: DecodeStep
) -> Iterator[str]:
    """Prefill ``generation``'s prompt at positions ``start..`` into ``cache``, then decode one
    token at a time through ``step`` until the generation finishes.

    Yields the text each sampled token completes (maybe ""), one item per token. The last
    sampled token is not fed: its KV is not in ``cache``, and the next turn of a conversation
    starts with it.
    """
    ids = generation.prompt_ids
    n = len(ids)
    device = model.device
    tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    positions = torch.arange(start, start + n, device=device).unsqueeze(0)  # (1, T)
    logits = prefill(model, tokens, cache, positions)  # (1, V)
    yield generation.step(logits[0])
    token_in = torch.empty(1, 1, dtype=torch.long, device=device)  # (1, 1), reused every step
    position_in = torch.empty(1, 1, dtype=torch.long, device=device)  # (1, 1)
    position = start + n
    while not generation.finished:
        token_in.fill_(generation.token_ids[-1])
        position_in.fill_(position)
        logits = step(token_in, position_in, cache)  # (1, V)
        position += 1
        yield generation.step(logits[0])


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the ``top_logprobs`` most likely alternatives."""

    token_id: int
    logprob: float
    top_logprobs: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """Token counts of one request; ``cached_tokens`` of the prompt came from the prefix cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """The result of a request.

    ``token_ids`` are every sampled token (a stop token included, as HF ``generate`` does);
    ``text`` is their decoded text without special tokens and cut before any stop string.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = None


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.longest = max(map(len, self.stops), default=0)
        self.held = ""  # text that may be the start of a stop string

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return ``(safe text to emit, whether a stop string was completed)``.

        On a match, the emitted text ends right before the stop string.
        """
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        hold = next(
            (
                k
                for k in range(min(len(buf), self.longest - 1), 0, -1)
                if any(s.startswith(buf[-k:]) for s in self.stops)
            ),
            0,
        )
        self.held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """The held-back text, released at the end of a generation that did not stop on it."""
        text, self.held = self.held, ""
        return text


class Generation:
    """Sampling, detokenization and stop rules for one request.

    Feed each step's logits to :meth:`next_token`, then the chosen id to :meth:`append`, which
    returns the newly completed text (always whole UTF-8 characters) until :attr:`finished`.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        vocab_size: int,
        *,
        cached_tokens: int = 0,
    ) -> None:
        self.params = params
        self.prompt_ids = list(prompt_ids)
        self.prompt_tokens = len(self.prompt_ids)
        self.cached_tokens = cached_tokens
        self.generator = (
            torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        )
        self.stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self.stop_ids.update(tokenizer.eos_token_ids)
        self.banned = sorted(self.stop_ids) if params.min_tokens else []
        self.seen: torch.Tensor | None = None  # (V,) bool: ids in prompt or output
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool)
            self.seen[list(prompt_ids)] = True
        self.counts: torch.Tensor | None = None  # (V,) output count of each id
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size, dtype=torch.int32)
        self.decoder = tokenizer.decode_stream(skip_special_tokens=True)
        self.stops = StopMatcher(params.stop)
        self.token_ids: list[int] = []
        self.text_parts: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs else None
        self.finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def next_token(self, logits: torch.Tensor) -> int:
        """Pick the next id from the model's logits ``[V]`` for the last position."""
        banned = self.banned if len(self.token_ids) < self.params.min_tokens else ()
        seen = self.seen.nonzero().squeeze(1) if self.seen is not None else None  # (N,)
        processed = process_logits(
            logits, self.params, seen=seen, counts=self.counts, banned=banned
        )  # (V,)
        if self.params.greedy:
            token = argmax(processed)
        else:
            token = draw(torch.softmax(processed, dim=-1), self.generator)
        if self.logprobs is not None:
            self.logprobs.append(self._logprob(logits, token))
        return token

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        logp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
        top: dict[int, float] = {}
        if self.params.top_logprobs:
            values, ids = torch.topk(logp, self.params.top_logprobs)
            top = dict(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(token, float(logp[token]), top)

    def step(self, logits: torch.Tensor) -> str:
        """Pick the next token from ``logits`` (``[V]``) and record it; the text it completes."""
        return self.append(self.next_token(logits))

    def append(self, token: int) -> str:
        """Record the sampled ``token``; return the text it completes (maybe "")."""
        self.token_ids.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1
        if token in self.stop_ids:
            return self._finish("stop")
        text, stopped = self.stops.push(self.decoder.add([token]))
        self.text_parts.append(text)
        if stopped:
            self.finish_reason = "stop"
            return text
        if len(self.token_ids) >= self.params.max_tokens:
            return text + self._finish("length")
        return text

    def cancel(self) -> str:
        """End the generation early (the engine's cancellation); returns the held text."""
        return self._finish("cancelled")

    def _finish(self, reason: FinishReason) -> str:
        self.finish_reason = reason
        text, _ = self.stops.push(self.decoder.finish())
        text += self.stops.flush()
        self.text_parts.append(text)
        return text

    def completion(self) -> Completion:
        """The result so far; call once :attr:`finished`."""
        usage = Usage(self.prompt_tokens, len(self.token_ids), self.cached_tokens)
        return Completion(
            self.text, list(self.token_ids), self.finish_reason or "length", usage, self.logprobs
        )
