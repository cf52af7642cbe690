"""Answering from passages with a local model: fit the passages into the model's context, ask
it through its chat template, and return the text with the passages it was given.

Loading a model needs the ``core`` extra (llm-infer, torch); :func:`fit_passages` needs
neither and is shared with llm-repl's ``/rag``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llm_rag.errors import RagError
from llm_rag.retriever import Hit, build_prompt


def load_model(source: str) -> Any:
    """An llm-infer ``LLM`` from ``source`` (checkpoint dir, HF dir, ``demo``).

    Raises :class:`RagError` when llm-infer is missing or the model does not load.
    """
    try:
        from llm_infer import LoadError, load
    except ImportError:
        raise RagError("--answer needs llm-infer: pip install 'llm-rag[core]'") from None
    try:
        return load(source)
    except LoadError as exc:
        raise RagError(str(exc)) from None


def fit_passages(
    question: str,
    hits: Sequence[Hit],
    *,
    count_tokens: Callable[[list[dict[str, Any]]], int],
    context_length: int,
    max_tokens: int,
    history: Sequence[Mapping[str, Any]] = (),
) -> list[Hit]:
    """The longest prefix of ``hits`` (best first, so the lowest-ranked go first) whose prompt,
    after ``history`` (earlier messages, system prompt first), leaves ``max_tokens`` free in a
    context of ``context_length`` tokens. ``count_tokens(messages)`` is the prompt's length in
    tokens, chat template included.

    Raises :class:`RagError` (one line) when not even one passage fits.
    """
    for n in range(len(hits), 0, -1):
        messages = [*history, {"role": "user", "content": build_prompt(question, hits[:n])}]
        if count_tokens(messages) + max_tokens <= context_length:
            return list(hits[:n])
    raise RagError(
        f"the model's context ({context_length} tokens) cannot hold one passage"
        f"{' after the conversation so far' if history else ''} and {max_tokens} new tokens: "
        "index with a smaller --chunk-size, ask for fewer tokens, or use a larger model"
    )


def chat_token_counter(llm: Any) -> Callable[[list[dict[str, Any]]], int]:
    """``count_tokens`` for :func:`fit_passages` with an llm-infer ``LLM``."""
    return lambda messages: len(llm.tokenizer.encode(llm.chat_prompt(messages)))


def answer(
    llm: Any, question: str, hits: Sequence[Hit], *, max_tokens: int = 256, **sampling
) -> tuple[str, list[Hit]]:
    """The model's answer to ``question`` from ``hits`` (as many as fit), and the hits it saw."""
    used = fit_passages(
        question,
        hits,
        count_tokens=chat_token_counter(llm),
        context_length=llm.context_length,
        max_tokens=max_tokens,
    )
    messages = [{"role": "user", "content": build_prompt(question, used)}]
    return llm.chat(messages, max_tokens=max_tokens, **sampling).text, used
