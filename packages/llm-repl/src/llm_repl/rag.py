"""``/rag DIR``: answer from documents. DIR is an index written by ``llm-rag index`` (opened)
or a folder of documents (indexed in memory). Each following question is sent with the
passages that best answer it, numbered, and the sources the answer cites are shown under it.

Needs llm-rag (``pip install 'llm-repl[rag]'``), which imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_repl.backends import estimated_budget

ANSWER_TOKENS = 256  # the most tokens kept free for the reply when max_tokens is not set


class RagError(Exception):
    """/rag could not open or index DIR; the message says why in one line."""


class Rag:
    """A retriever the REPL asks before each question; ``k`` passages a question."""

    def __init__(self, retriever: Any, directory: Path, summary: str, k: int = 5) -> None:
        self.retriever, self.directory, self.summary, self.k = retriever, directory, summary, k

    @classmethod
    def open(cls, directory: str | Path) -> Rag:
        """Open the index in ``directory``, or index the documents under it (in memory).

        Raises :class:`RagError` when llm-rag is not installed, the directory does not exist,
        or it holds nothing that can be indexed (the message counts what was skipped).
        """
        try:
            import llm_rag
        except ImportError:
            raise RagError("/rag needs llm-rag: pip install 'llm-repl[rag]'") from None
        path = Path(directory).expanduser()
        try:
            if (path / "manifest.json").is_file():
                retriever = llm_rag.Retriever.load(path)
                return cls(retriever, path, f"opened the index {path} ({len(retriever)} passages)")
            retriever = llm_rag.Retriever()
            report = retriever.add_files([path])
        except (llm_rag.RagError, ValueError, OSError) as exc:
            raise RagError(str(exc)) from None
        return cls(retriever, path, f"indexed {path}: {report.summary()}")

    def prompt(
        self,
        question: str,
        backend: Any = None,
        history: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> tuple[str, list[Any]]:
        """The prompt to send for ``question`` (numbered passages, then the question) and the
        passages in it: the best ``k`` that fit, after ``history``, in ``backend``'s context
        (its ``context_budget()``; an estimate when it has none) with ``max_tokens`` left for
        the reply (unset: a quarter of the context, at most :data:`ANSWER_TOKENS`); the
        lowest-ranked are dropped first. Blocking (it may ask the server to count tokens).

        Raises :class:`RagError` when not even one passage fits.
        """
        import llm_rag
        from llm_rag.answer import fit_passages

        hits = self.retriever.query(question, self.k)
        budget = getattr(backend, "context_budget", None)
        count, context = budget() if budget else estimated_budget()
        try:
            hits = fit_passages(
                question,
                hits,
                count_tokens=count,
                context_length=context,
                max_tokens=max_tokens or min(ANSWER_TOKENS, context // 4),
                history=history,
            )
        except llm_rag.RagError as exc:
            raise RagError(str(exc)) from None
        return llm_rag.build_prompt(question, hits), hits


def sources(answer: str, hits: list[Any]) -> list[str]:
    """Lines for the sources ``answer`` cites (``[n] path:start-end``); all of them, marked as
    given rather than cited, when it cites none."""
    from llm_rag.retriever import source_lines

    return source_lines(answer, hits)
