"""A lexical index: Okapi BM25 over word tokens, and reciprocal rank fusion of rankings.

Dense retrieval alone misses exact names and numbers; BM25 finds them. Scores follow the
Lucene form of BM25 (``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``k1 = 1.2``, ``b = 0.75``,
Lucene's and Elasticsearch's defaults).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from llm_rag.errors import IndexFormatError
from llm_rag.persist import atomic_directory, read_header, write_header

WORD = re.compile(r"[^\W_]+(?:_[^\W_]+)*|\d+")  # words, snake_case names kept whole (and split)
RRF_K = 60  # the constant of Cormack et al. (2009); Elasticsearch's and Qdrant's default


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; ``snake_case`` names give the whole name and each part."""
    tokens = []
    for word in WORD.findall(text.lower()):
        tokens.append(word)
        if "_" in word:
            tokens.extend(word.split("_"))
    return tokens


class BM25Index:
    """Okapi BM25 over documents identified by integer ids; add, delete, search, save, load."""

    def __init__(self, *, k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        self._docs: dict[int, tuple[str, ...]] = {}  # id -> its distinct terms (tf in postings)
        self._lengths: dict[int, int] = {}
        self._postings: dict[str, dict[int, int]] = defaultdict(dict)
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._docs

    def add(self, texts: Sequence[str], ids: Iterable[int]) -> None:
        """Index ``texts`` under ``ids``; raises ``ValueError`` for ids already present."""
        ids = [int(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        taken = [i for i in ids if i in self._docs]
        if taken or len(set(ids)) != len(ids):
            raise ValueError(f"ids already in the BM25 index or repeated: {taken[:5] or ids[:5]}")
        for id_, text in zip(ids, texts, strict=True):
            self._add_counts(id_, Counter(tokenize(text)))

    def _add_counts(self, id_: int, counts: Counter[str]) -> None:
        self._docs[id_] = tuple(counts)
        length = sum(counts.values())
        self._lengths[id_] = length
        self._total_length += length
        for term, tf in counts.items():
            self._postings[term][id_] = tf

    def delete(self, ids: Iterable[int]) -> None:
        """Remove ``ids``; raises ``KeyError`` naming ids that are not in the index."""
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self._docs]
        if missing:
            raise KeyError(f"ids not in the BM25 index: {missing[:5]}")
        for id_ in ids:
            for term in self._docs.pop(id_):
                posting = self._postings[term]
                del posting[id_]
                if not posting:
                    del self._postings[term]
            self._total_length -= self._lengths.pop(id_)

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score of every document that shares a term with ``query`` (others score 0)."""
        n = len(self._docs)
        if n == 0:
            return {}
        avg = self._total_length / n or 1.0
        out: dict[int, float] = defaultdict(float)
        for term, qtf in Counter(tokenize(query)).items():
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for id_, tf in posting.items():
                norm = self.k1 * (1 - self.b + self.b * self._lengths[id_] / avg)
                out[id_] += qtf * idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scoring ids and scores, best first (ties by id); only ids scoring > 0."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        ranked = sorted(self.scores(query).items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        ids = np.array([i for i, _ in ranked], dtype=np.int64)
        return ids, np.array([s for _, s in ranked], dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        """Write the index atomically: a header and ``docs.jsonl`` (one document's term counts a line)."""
        with atomic_directory(directory, "bm25") as tmp:
            with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
                for id_, terms in self._docs.items():
                    counts = {term: self._postings[term][id_] for term in terms}
                    f.write(json.dumps([id_, counts], ensure_ascii=False) + "\n")
            write_header(tmp, "bm25", k1=self.k1, b=self.b, documents=len(self._docs))

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read an index :meth:`save` wrote; raises :class:`IndexFormatError` if it is not one."""
        header = read_header(directory, "bm25")
        index = cls(k1=header["k1"], b=header["b"])
        with open(Path(directory) / "docs.jsonl", encoding="utf-8") as f:
            for line in f:
                id_, counts = json.loads(line)
                index._add_counts(int(id_), Counter(counts))
        if len(index) != header["documents"]:
            raise IndexFormatError(
                f"{directory}: {len(index)} documents, the header says {header['documents']}"
            )
        return index


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse ranked id lists: ``score(id) = sum over lists of 1 / (k + rank)``, rank from 1.

    Returns ``(id, score)`` pairs, best first; ties keep the order of first appearance.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, id_ in enumerate(ranking, start=1):
            fused[int(id_)] = fused.get(int(id_), 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])
