"""``Session``: a multi-turn chat that keeps its KV cache between turns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from llm_infer.generate import Completion, Generation, run
from llm_infer.llm import LLM, Messages
from llm_infer.sampling import DEFAULT_MAX_TOKENS


class Session:
    """A conversation with one model: each :meth:`send` feeds only the new turn's tokens.

    The conversation is rendered by the tokenizer's chat template; when the rendering of the
    history is a prefix of the new rendering (the usual case), the tokens already in the cache
    are reused and only the rest is prefilled. Otherwise the cache is refilled from scratch.

    ``cache_kind="static"`` (default) holds ``capacity`` tokens (default: the model's context)
    and raises :class:`~llm_infer.errors.ContextLengthError` beyond it. ``cache_kind="sink"``
    (a ring of sink tokens + a window, constant memory) never runs out; ``cache_options``
    (``window``, ``sink_tokens``, ``position_mode``) go to the model's ``new_cache``. With a
    static cache, an ``LLM(..., compile=True)`` decodes through its compiled step.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        system: str | None = None,
        cache_kind: str = "static",
        capacity: int | None = None,
        **cache_options: Any,
    ) -> None:
        self.llm = llm
        self.system = system
        with torch.inference_mode():  # the kind of tensor LLM's caches are, and compiled for
            self.cache = llm.model.new_cache(1, capacity, kind=cache_kind, **cache_options)
        self.unbounded = getattr(self.cache, "kind", cache_kind) == "sink"
        self.limit = None if self.unbounded else getattr(self.cache, "capacity", capacity)
        self.messages: list[dict[str, Any]] = []
        self.last: Completion | None = None  # the latest completed turn
        self._clear()

    @torch.inference_mode()  # the cache holds inference tensors: write them in that mode
    def _reset_cache(self) -> None:
        self.cache.reset()

    def _clear(self) -> None:
        self._reset_cache()
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self._text = ""  # the rendered text whose tokens are in the cache (or pending)
        self._pending: list[int] = []  # the last sampled token, not yet fed
        self.position = 0  # tokens fed so far: the position of the next one

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays); the cache is kept for reuse."""
        self._clear()

    def send(self, text: str, **params: Any) -> Completion:
        """The assistant's reply to the user's ``text``; sampling keywords as for ``LLM``.

        ``usage.cached_tokens`` counts the earlier turns' tokens reused from the cache. Raises
        ``SamplingError`` and, with a static cache, ``ContextLengthError`` naming the limit and
        the length asked for.
        """
        return self.chat([*self.messages, {"role": "user", "content": text}], **params)

    def stream(self, text: str, **params: Any) -> Iterator[str]:
        """:meth:`send`, yielding the reply's text deltas (errors raised before the first)."""
        return self.stream_chat([*self.messages, {"role": "user", "content": text}], **params)

    def chat(self, messages: Messages, **params: Any) -> Completion:
        """The assistant's reply to the whole conversation ``messages`` (a front end that
        keeps its own history, such as the REPL, sends it every turn). The tokens of the
        longest rendered prefix already in the cache are reused (every earlier turn, when
        ``messages`` extends the session's); only the rest is prefilled. Raises as
        :meth:`send` does."""
        generation = self._start(messages, params)
        for _ in self._run(generation):
            pass
        return generation.completion()

    def stream_chat(self, messages: Messages, **params: Any) -> Iterator[str]:
        """:meth:`chat`, yielding the reply's text deltas (errors raised before the first).
        :attr:`last` holds the completion once the stream ends."""
        generation = self._start(messages, params)
        return (delta for delta in self._run(generation) if delta)

    def _start(self, messages: Messages, params: dict[str, Any]) -> Generation:
        llm = self.llm
        sp = llm.sampling_params(**params)
        messages = [dict(m) for m in messages]
        rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        held = self.position
        if held and rendered.startswith(self._text):
            new_ids = self._pending + llm.tokenizer.encode(rendered[len(self._text) :])
        else:
            held, new_ids = 0, llm.encode_prompt(rendered)
        if not self.unbounded:
            sp = llm.fit(sp, held, len(new_ids), limit=self.limit)
        elif sp.max_tokens is None:
            sp = sp.model_copy(update={"max_tokens": DEFAULT_MAX_TOKENS})
        if held == 0:  # a fresh start, or the history no longer matches what the cache holds
            self._reset_cache()
            self.position = 0
        generation = Generation(new_ids, sp, llm.tokenizer, llm.vocab_size, cached_tokens=held)
        self._turn = (messages, rendered)
        return generation

    @torch.inference_mode()
    def _run(self, generation: Generation) -> Iterator[str]:
        start = self.position
        self._text, self.position = "", 0  # until the turn completes, the cache is in flux
        yield from run(self.llm.model, self.cache, generation, start, self.llm.step)
        messages, rendered = self._turn
        out = generation.token_ids
        self.position = start + len(generation.prompt_ids) + len(out) - 1
        self._pending = out[-1:]
        self._text = rendered + self.llm.tokenizer.decode(out)
        self.messages = [*messages, {"role": "assistant", "content": generation.text}]
        self.last = generation.completion()
