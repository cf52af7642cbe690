"""The seams llm-rag needs from outside, as structural protocols.

Producers satisfy them without importing llm-rag: an embedding model (any object with
``embed``), a tokenizer for token-sized chunks (llm-tokenizer's ``Tokenizer`` has ``encode``),
and a vector index: the built-in :class:`~llm_rag.index.FlatIndex` and
:class:`~llm_rag.index.HNSWIndex`, or an adapter over FAISS or a vector server (see the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Texts to vectors. ``embed(texts)`` returns ``[len(texts), dim]`` float32."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...


class Tokenizer(Protocol):
    """What token-sized chunking needs: ``encode(text) -> list[int]``."""

    def encode(self, text: str) -> list[int]: ...


@runtime_checkable
class Index(Protocol):
    """A vector index over integer ids, scored by cosine similarity (higher is closer).

    ``add`` returns the ids it stored (assigned from a counter when ``ids`` is None);
    ``search`` returns ``(ids [nq, k'], scores [nq, k'])`` best first, ``k' = min(k, len)``;
    ``delete`` removes ids (unknown ids raise ``KeyError``); ``save(dir)`` writes the whole
    index atomically and ``load(dir)`` reads it back.
    """

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def delete(self, ids: np.ndarray) -> None: ...

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path) -> Self: ...
