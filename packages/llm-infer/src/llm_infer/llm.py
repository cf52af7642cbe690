"""``LLM``: a model and its tokenizer, with ``generate``, ``stream`` and ``chat``.

A thin caller of :mod:`llm_infer.generate`: each request gets a fresh static cache sized to
it, a :class:`~llm_infer.generate.Generation`, and :func:`~llm_infer.generate.run`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from llm_infer.compiled import compiled_capacity
from llm_infer.errors import ContextLengthError, SamplingError
from llm_infer.generate import Completion, DecodeStep, Generation, run
from llm_infer.protocols import CausalLM, Tokenizer
from llm_infer.sampling import DEFAULT_MAX_TOKENS, SamplingParams

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, Any]]


class LLM:
    """A causal language model with its tokenizer, ready to generate.

    A model with ``fuse_projections`` (llm-core's ``Transformer``) has it called: its weights
    stay the same tensors by name, and inference runs fewer, larger matrix products.
    ``compile`` (default: on for models of 20M parameters and more, see
    :func:`~llm_infer.generate.compiles_by_default`) runs decode steps on static caches through a compiled
    :class:`~llm_infer.generate.DecodeStep` (``torch.compile``; the first request, and the
    first of each larger cache size, waits for the compilation, about 40 s on 2 CPU cores,
    announced on the ``llm_infer`` logger).

    A tokenizer with more ids than the model's vocabulary is refused here (``ValueError``
    with both sizes), not mid-generation.

    Sampling keywords are those of :class:`~llm_infer.sampling.SamplingParams` (OpenAI's names
    plus ``top_k``, ``min_p``, ``repetition_penalty``); a bad one raises
    :class:`~llm_infer.errors.SamplingError`.
    """

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer,
        *,
        source: str = "",
        compile: bool | None = None,
    ) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
                f"vocabulary of {model.config.vocab_size}: its extra ids have no logits"
            )
        fuse = getattr(model, "fuse_projections", None)
        if fuse is not None:
            fuse()  # one matrix product for q/k/v and for gate/up: same weights, less per step
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.step = DecodeStep(model, compile=compile)

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
        sp.validate_for(self.vocab_size)
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
                f"min_tokens must be at most max_tokens={max_tokens}, got {params.min_tokens}",
                param="min_tokens",
            )
        return params.model_copy(update={"max_tokens": max_tokens})

    # -- generation ------------------------------------------------------------------------

    def stream(self, prompt: Prompt, **params: Any) -> Iterator[str]:
        """Yield text deltas (whole UTF-8 characters, never empty) as tokens are generated.

        Raises ``SamplingError``, ``ValueError`` (bad prompt) or ``ContextLengthError`` before
        the first delta.
        """
        generation = self.request(prompt, **params)
        return (delta for delta in self.run(generation) if delta)

    def generate(self, prompt: Prompt, **params: Any) -> Completion:
        """Generate a completion of ``prompt`` (text or token ids); see :meth:`stream` for errors."""
        generation = self.request(prompt, **params)
        for _ in self.run(generation):
            pass
        return generation.completion()

    def chat(self, messages: Messages, **params: Any) -> Completion:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}]``)."""
        return self.generate(self.chat_prompt(messages), **params)

    def stream_chat(self, messages: Messages, **params: Any) -> Iterator[str]:
        """:meth:`chat`, streamed as text deltas."""
        return self.stream(self.chat_prompt(messages), **params)

    def request(self, prompt: Prompt, **params: Any) -> Generation:
        """A validated :class:`~llm_infer.generate.Generation` for ``prompt``, ready for
        :meth:`run`; raises as :meth:`stream` does."""
        sp = self.sampling_params(**params)
        ids = self.encode_prompt(prompt)
        return Generation(ids, self.fit(sp, 0, len(ids)), self.tokenizer, self.vocab_size)

    @torch.inference_mode()
    def run(self, generation: Generation) -> Iterator[str]:
        """Run ``generation`` on a fresh static cache: one item (the text completed, maybe "")
        per sampled token, the first after the prefill."""
        need = len(generation.prompt_ids) + generation.params.max_tokens
        if self.step.compiled is not None:  # a few fixed sizes, each compiled once
            need = compiled_capacity(need, self.context_length)
        cache = self.model.new_cache(1, need)
        yield from run(self.model, cache, generation, 0, self.step)
