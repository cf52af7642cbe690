"""Answering from passages with a local model: fit the passages into the model's context, ask
it through its chat template, and return the text with the passages it was given.

Needs the ``core`` extra (llm-infer, torch); imported only by ``llm-rag query --answer``.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def fit_passages(llm: Any, question: str, hits: Sequence[Hit], max_tokens: int) -> list[Hit]:
    """The longest prefix of ``hits`` whose prompt leaves ``max_tokens`` free in the context.

    Raises :class:`RagError` when not even one passage fits.
    """
    for n in range(len(hits), 0, -1):
        messages = [{"role": "user", "content": build_prompt(question, hits[:n])}]
        if len(llm.tokenizer.encode(llm.chat_prompt(messages))) + max_tokens <= llm.context_length:
            return list(hits[:n])
    raise RagError(
        f"the model's context ({llm.context_length} tokens) cannot hold one passage and "
        f"{max_tokens} new tokens: index with a smaller --chunk-size or use a larger model"
    )


def answer(
    llm: Any, question: str, hits: Sequence[Hit], *, max_tokens: int = 256, **sampling
) -> tuple[str, list[Hit]]:
    """The model's answer to ``question`` from ``hits`` (as many as fit), and the hits it saw."""
    used = fit_passages(llm, question, hits, max_tokens)
    messages = [{"role": "user", "content": build_prompt(question, used)}]
    return llm.chat(messages, max_tokens=max_tokens, **sampling).text, used
