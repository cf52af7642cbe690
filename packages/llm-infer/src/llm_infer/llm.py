"""``LLM``: a model and its tokenizer, with ``generate``, ``stream`` and ``chat``.

Generation is a few small functions in the manner of gpt-fast: :func:`prefill` runs the
prompt through a preallocated static cache, :func:`decode_one_token` runs one token, and
:func:`decode_n_tokens` loops until the request's :class:`~llm_infer.generation.Generation`
says stop. The decode loop reuses its input tensors and the cache; the only host sync per
step is reading the sampled token.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from llm_infer.compiled import CompiledDecoder, compiled_capacity
from llm_infer.errors import ContextLengthError, SamplingError
from llm_infer.generation import Completion, Generation
from llm_infer.protocols import CausalLM, Tokenizer
from llm_infer.sampling import DEFAULT_MAX_TOKENS, SamplingParams

if TYPE_CHECKING:
    from llm_infer.engine import Engine
    from llm_infer.session import Session

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the activations of a long prompt

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, Any]]


def prefill(
    model: CausalLM, tokens: torch.Tensor, cache: Any, positions: torch.Tensor
) -> torch.Tensor:
    """Run ``tokens`` (``[B, T]``) at ``positions`` (``[B, T]``) into ``cache``, in chunks of
    :data:`PREFILL_CHUNK`; return the logits of the last position ``[B, V]``."""
    for start in range(0, tokens.shape[1], PREFILL_CHUNK):
        chunk = slice(start, start + PREFILL_CHUNK)
        logits = model.forward(
            tokens[:, chunk], cache, positions[:, chunk], logits_to_keep=1
        )  # (B, 1, V)
    return logits[:, -1]  # (B, V)


def decode_one_token(
    model: CausalLM, token: torch.Tensor, cache: Any, position: torch.Tensor
) -> torch.Tensor:
    """One decode step: ``token`` and ``position`` ``[B, 1]`` in, next-token logits ``[B, V]`` out."""
    return model.forward(token, cache, position)[:, -1]  # (B, V)


def decode_n_tokens(
    model: CausalLM,
    cache: Any,
    generation: Generation,
    token: int,
    position: int,
    decoder: CompiledDecoder | None = None,
) -> Iterator[str]:
    """Feed ``token`` at ``position`` and keep sampling until ``generation`` finishes.

    Yields the text each new token completes. The last sampled token is not fed (its KV is
    not in ``cache``). ``decoder``, if given, runs each step instead of the eager forward.
    """
    device = model.device
    token_in = torch.empty(1, 1, dtype=torch.long, device=device)  # (1, 1), reused every step
    position_in = torch.empty(1, 1, dtype=torch.long, device=device)  # (1, 1)
    while not generation.finished:
        token_in.fill_(token)
        position_in.fill_(position)
        if decoder is not None:
            logits = decoder(token_in, position_in, cache)  # (1, V)
        else:
            logits = decode_one_token(model, token_in, cache, position_in)  # (1, V)
        token = generation.next_token(logits[0])
        position += 1
        yield generation.append(token)


class LLM:
    """A causal language model with its tokenizer, ready to generate.

    A model with ``fuse_projections`` (llm-core's ``Transformer``) has it called: its weights
    stay the same tensors by name, and inference runs fewer, larger matrix products.
    ``compile=True`` runs :meth:`generate`'s decode steps through a
    :class:`~llm_infer.compiled.CompiledDecoder` (``torch.compile``; the first request, and
    the first of each larger cache size, waits for the compilation, about 40 s on 2 CPU cores).

    Sampling keywords are those of :class:`~llm_infer.sampling.SamplingParams` (OpenAI's names
    plus ``top_k``, ``min_p``, ``repetition_penalty``); a bad one raises
    :class:`~llm_infer.errors.SamplingError`.
    """

    def __init__(
        self, model: CausalLM, tokenizer: Tokenizer, *, source: str = "", compile: bool = False
    ) -> None:
        fuse = getattr(model, "fuse_projections", None)
        if fuse is not None:
            fuse()  # one matrix product for q/k/v and for gate/up: same weights, less per step
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.decoder = CompiledDecoder(model) if compile else None

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + output) one sequence may hold."""
        return self.model.config.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def __repr__(self) -> str:
        return f"LLM(source={self.source!r}, vocab_size={self.vocab_size}, context_length={self.context_length})"

    # -- requests --------------------------------------------------------------------------

    def sampling_params(self, **params: Any) -> SamplingParams:
        """Validated :class:`SamplingParams` for this model; raises ``SamplingError``."""
        sp = SamplingParams.from_kwargs(**params)
        sp.validate(self.vocab_size)
        return sp

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt, or the ids given, checked.

        A text prompt gets the tokenizer's BOS first when it asks for one (``add_bos_token``:
        HF Llama-style configs, GGUF ``tokenizer.ggml.add_bos_token``), as HF
        ``tokenizer(prompt).input_ids`` and vLLM do; text that already begins with the BOS
        (a chat template that writes it) gets no second one. Raises ``ValueError`` for an
        empty prompt or an id outside the vocabulary.
        """
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        wants_bos = isinstance(prompt, str) and getattr(self.tokenizer, "add_bos_token", False)
        if wants_bos and bos is not None and ids[0] != bos:
            ids = [bos, *ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(
                f"prompt token id {bad} is outside the vocabulary [0, {self.vocab_size})"
            )
        return ids

    def chat_prompt(self, messages: Messages) -> str:
        """``messages`` rendered by the tokenizer's chat template, ready for the reply."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def fit(
        self, params: SamplingParams, held: int, new: int, limit: int | None = None
    ) -> SamplingParams:
        """``params`` with ``max_tokens`` set (when None: up to 256, within the context left).

        Raises :class:`ContextLengthError`, naming the limit and the length asked for, when
        ``held + new + max_tokens`` tokens do not fit in ``limit`` (default: the context).
        """
        limit = limit or self.context_length
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(DEFAULT_MAX_TOKENS, limit - held - new))
        need = held + new + max_tokens
        if need > limit:
            held_part = f"{held} held + " if held else ""
            raise ContextLengthError(
                f"context length exceeded: the limit is {limit} tokens, this request needs {need} "
                f"({held_part}{new} prompt + {max_tokens} max_tokens)"
            )
        if params.min_tokens > max_tokens:
            raise SamplingError(
                f"min_tokens must be at most max_tokens={max_tokens}, got {params.min_tokens}"
            )
        return replace(params, max_tokens=max_tokens)

    # -- generation ------------------------------------------------------------------------

    def stream(self, prompt: Prompt, **params: Any) -> Iterator[str]:
        """Yield text deltas (whole UTF-8 characters, never empty) as tokens are generated.

        Raises ``SamplingError``, ``ValueError`` (bad prompt) or ``ContextLengthError`` before
        the first delta.
        """
        generation = self._start(prompt, params)
        return (delta for delta in self._run(generation) if delta)

    def generate(self, prompt: Prompt, **params: Any) -> Completion:
        """Generate a completion of ``prompt`` (text or token ids); see :meth:`stream` for errors."""
        generation = self._start(prompt, params)
        for _ in self._run(generation):
            pass
        return generation.completion()

    def chat(self, messages: Messages, **params: Any) -> Completion:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}]``)."""
        return self.generate(self.chat_prompt(messages), **params)

    def stream_chat(self, messages: Messages, **params: Any) -> Iterator[str]:
        """:meth:`chat`, streamed as text deltas."""
        return self.stream(self.chat_prompt(messages), **params)

    def session(self, **options: Any) -> Session:
        """A multi-turn :class:`~llm_infer.session.Session` on this model."""
        from llm_infer.session import Session

        return Session(self, **options)

    def engine(self, **options: Any) -> Engine:
        """A batching :class:`~llm_infer.engine.Engine` on this model (start it with ``async with``)."""
        from llm_infer.engine import Engine

        return Engine(self, **options)

    def _start(self, prompt: Prompt, params: dict[str, Any]) -> Generation:
        sp = self.sampling_params(**params)
        ids = self.encode_prompt(prompt)
        return Generation(ids, self.fit(sp, 0, len(ids)), self.tokenizer, self.vocab_size)

    @torch.inference_mode()
    def _run(self, generation: Generation) -> Iterator[str]:
        ids = generation.prompt_ids
        n = len(ids)
        need = n + generation.params.max_tokens
        if self.decoder is not None:  # a few fixed sizes, each compiled once
            need = compiled_capacity(need, self.context_length)
        cache = self.model.new_cache(1, need)
        device = self.model.device
        tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        positions = torch.arange(n, device=device).unsqueeze(0)  # (1, T)
        logits = prefill(self.model, tokens, cache, positions)  # (1, V)
        token = generation.next_token(logits[0])
        yield generation.append(token)
        yield from decode_n_tokens(self.model, cache, generation, token, n, self.decoder)
