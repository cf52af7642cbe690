"""Embedders: a deterministic hashing embedder (no model), a wrapper for any callable, and
:func:`load_embedder`, which builds one from the spec string an index stores.

Specs: ``"hash"`` or ``"hash:DIM"`` (:class:`HashingEmbedder`), ``"core:SRC"`` (mean-pooled
hidden states of an llm-core model loaded by llm-infer from ``SRC``, a checkpoint directory,
an HF directory or ``demo``; needs the ``core`` extra, see :mod:`llm_rag.core`).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from llm_rag.bm25 import tokenize
from llm_rag.index import normalize

DEFAULT_SPEC = "hash:1024"


class HashingEmbedder:
    """Signed feature hashing of words and their character trigrams, sublinear term frequency,
    L2-normalised: a bag-of-words vector that needs no model and no corpus statistics.

    Deterministic across processes and machines (CRC-32, not Python's salted ``hash``), so a
    saved index and a later query agree. It matches words, not meanings: use a model's
    embedder (``core:SRC``) for paraphrases.
    """

    def __init__(self, dim: int = 1024) -> None:
        if dim < 8:
            raise ValueError(f"a hashing embedder needs dim >= 8, got {dim}")
        self._dim = dim
        self.spec = f"hash:{dim}"
        self._features = functools.lru_cache(maxsize=1 << 18)(self._word_features)

    @property
    def dim(self) -> int:
        return self._dim

    def _word_features(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        padded = f"<{word}>"
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)] if len(word) > 2 else []
        features = [f"w:{word}", *(f"c:{g}" for g in grams)]  # trigrams: "joins" meets "join"
        hashes = [zlib.crc32(f.encode()) for f in features]
        index = np.array([h % self._dim for h in hashes], dtype=np.int64)
        sign = np.array([1.0 if (h // self._dim) & 1 else -1.0 for h in hashes])
        return index, sign

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 unit vectors (a text with no words maps to zeros)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float64)  # (n, d)
        for row, text in enumerate(texts):
            for word, tf in Counter(tokenize(text)).items():
                index, values = self._features(word)
                np.add.at(out[row], index, values * (1.0 + math.log(tf)))
        return normalize(out)


class CallableEmbedder:
    """Any ``fn(texts) -> [n, dim]`` array as an :class:`~llm_rag.protocols.Embedder`.

    The output is checked (shape, finite) and L2-normalised. Raises ``ValueError`` when the
    function returns the wrong shape.
    """

    def __init__(self, fn: Callable[[list[str]], np.ndarray], dim: int, spec: str = "callable"):
        self.fn, self._dim, self.spec = fn, dim, spec

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.asarray(self.fn(list(texts)), dtype=np.float32)
        if out.shape != (len(texts), self._dim):
            raise ValueError(
                f"the embedder returned shape {out.shape}, expected ({len(texts)}, {self._dim})"
            )
        if not np.isfinite(out).all():
            raise ValueError("the embedder returned NaN or infinite values")
        return normalize(out)


def load_embedder(spec: str):
    """An embedder from its spec (``"hash"``, ``"hash:DIM"``, ``"core:SRC"``).

    Raises ``ValueError`` for an unknown spec, and :class:`~llm_rag.errors.RagError` when
    ``core:`` is asked for without the ``core`` extra or its model does not load.
    """
    name, _, arg = spec.partition(":")
    if name == "hash":
        try:
            return HashingEmbedder(int(arg) if arg else 1024)
        except ValueError as exc:
            raise ValueError(f"bad embedder {spec!r}: {exc}") from None
    if name == "core" and arg:
        from llm_rag.core import MeanPoolEmbedder  # torch, only when asked for

        return MeanPoolEmbedder.from_source(arg)
    raise ValueError(f"unknown embedder {spec!r}: use 'hash', 'hash:DIM' or 'core:MODEL'")
