"""Vector indexes over integer ids, scored by cosine similarity: exact and HNSW.

Both satisfy :class:`llm_rag.protocols.Index`. Vectors are L2-normalised on the way in, so a
score is the cosine similarity (inner product of unit vectors) and higher is closer.
:func:`make_index` accepts FAISS-style names (``"Flat"``, ``"HNSW32"``); :func:`load_index`
opens whichever kind a directory holds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

import hnswlib
import numpy as np

from llm_rag.errors import IndexFormatError
from llm_rag.persist import atomic_directory, read_header, write_header

QUERY_BLOCK = 1024  # queries scored per matrix product in FlatIndex: [1024, n] float32 at a time


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); float32 ``[n, d]``."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)


def check_vectors(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``[n, dim]`` array; a 1-D vector becomes one row.

    Raises ``ValueError`` naming the shape or the non-finite values.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must be [n, {dim}], got shape {tuple(np.shape(vectors))}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return np.ascontiguousarray(array)


def _check_ids(ids: np.ndarray | None, n: int, next_id: int, present) -> np.ndarray:
    if ids is None:
        return np.arange(next_id, next_id + n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"ids must be [{n}] to match the vectors, got shape {ids.shape}")
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise ValueError("ids must be non-negative integers")
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != n:
        raise ValueError("ids repeat within one add()")
    taken = [int(i) for i in ids if present(int(i))]
    if taken:
        raise ValueError(f"ids already in the index: {taken[:5]}{' ...' if len(taken) > 5 else ''}")
    return ids


class FlatIndex:
    """Exact cosine search: every query scored against every vector, batched in numpy."""

    kind = "flat"

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = dim
        self._store = np.zeros((0, dim), dtype=np.float32)  # (capacity, d): unit rows, then room
        self._store_ids = np.zeros(0, dtype=np.int64)  # (capacity,)
        self._n = 0
        self._id_set: set[int] = set()
        self._next_id = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def _vectors(self) -> np.ndarray:
        return self._store[: self._n]  # (n, d)

    @property
    def _ids(self) -> np.ndarray:
        return self._store_ids[: self._n]  # (n,)

    def _set(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._store, self._store_ids, self._n = vectors, ids, len(ids)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._id_set

    def ids(self) -> np.ndarray:
        """The ids stored, in insertion order."""
        return self._ids.copy()

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Store ``vectors`` (``[n, dim]``) under ``ids`` (default: the next free ids); return the ids.

        Raises ``ValueError`` on a wrong shape, non-finite values or ids already present.
        """
        vectors = check_vectors(vectors, self._dim)
        ids = _check_ids(ids, len(vectors), self._next_id, self.__contains__)
        end = self._n + len(ids)
        if end > len(self._store_ids):  # grow by doubling: adds in small batches stay linear
            capacity = max(end, 2 * len(self._store_ids), 1024)
            store = np.zeros((capacity, self._dim), dtype=np.float32)  # (capacity, d)
            store[: self._n] = self._vectors
            store_ids = np.zeros(capacity, dtype=np.int64)
            store_ids[: self._n] = self._ids
            self._store, self._store_ids = store, store_ids
        self._store[self._n : end] = normalize(vectors)
        self._store_ids[self._n : end] = ids
        self._n = end
        self._id_set.update(int(i) for i in ids)
        if len(ids):
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar ids and their cosine scores, best first: ``([nq, k'], [nq, k'])``.

        ``k' = min(k, len(self))``. Raises ``ValueError`` on a bad shape or ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = normalize(check_vectors(queries, self._dim, "queries"))
        k = min(k, len(self))
        out_ids = np.zeros((len(queries), k), dtype=np.int64)
        out_scores = np.zeros((len(queries), k), dtype=np.float32)
        if k == 0:
            return out_ids, out_scores
        for start in range(0, len(queries), QUERY_BLOCK):
            block = queries[start : start + QUERY_BLOCK]  # (b, d)
            scores = block @ self._vectors.T  # (b, n)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k), unordered
            top_scores = np.take_along_axis(scores, top, axis=1)  # (b, k)
            order = np.argsort(-top_scores, axis=1, kind="stable")  # (b, k)
            top = np.take_along_axis(top, order, axis=1)
            out_ids[start : start + len(block)] = self._ids[top]
            out_scores[start : start + len(block)] = np.take_along_axis(top_scores, order, axis=1)
        return out_ids, out_scores

    def delete(self, ids: np.ndarray) -> None:
        """Remove ``ids``; raises ``KeyError`` naming ids that are not in the index."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        missing = [int(i) for i in ids if int(i) not in self._id_set]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        keep = ~np.isin(self._ids, ids)
        self._set(self._vectors[keep], self._ids[keep])
        self._id_set.difference_update(int(i) for i in ids)

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically (header, ``vectors.npy``, ``ids.npy``)."""
        with atomic_directory(directory, "index") as tmp:
            np.save(tmp / "vectors.npy", self._vectors)
            np.save(tmp / "ids.npy", self._ids)
            write_header(tmp, "index", kind=self.kind, dim=self._dim, next_id=self._next_id)

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read an index :meth:`save` wrote; raises :class:`IndexFormatError` if it is not one."""
        header = _header(directory, cls.kind)
        index = cls(int(header["dim"]))
        vectors, ids = (
            np.load(Path(directory) / "vectors.npy"),
            np.load(Path(directory) / "ids.npy"),
        )
        if vectors.shape != (len(ids), index.dim):
            raise IndexFormatError(
                f"{directory}: vectors {vectors.shape} do not match {len(ids)} ids"
            )
        index._set(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        index._id_set = {int(i) for i in ids}
        index._next_id = int(header["next_id"])
        return index


class HNSWIndex:
    """Approximate cosine search over an hnswlib HNSW graph.

    ``M`` (links per node), ``ef_construction`` (candidate list while building) and ``ef``
    (candidate list while searching; raised to ``k`` when smaller) trade memory and time for
    recall, as in hnswlib and FAISS. Adds grow the graph in place; deletes mark the ids so they
    are never returned (the slots are reused by later adds).
    """

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        M: int = 32,
        ef_construction: int = 200,
        ef: int = 64,
        num_threads: int = -1,
    ) -> None:
        if dim <= 0 or M < 2 or ef_construction < 1 or ef < 1:
            raise ValueError(
                f"HNSW needs dim > 0, M >= 2, ef_construction >= 1, ef >= 1; got "
                f"dim={dim}, M={M}, ef_construction={ef_construction}, ef={ef}"
            )
        self._dim, self.M, self.ef_construction, self.ef = dim, M, ef_construction, ef
        self.num_threads = num_threads
        self._graph = hnswlib.Index(space="cosine", dim=dim)
        self._graph.init_index(
            max_elements=1024, M=M, ef_construction=ef_construction, allow_replace_deleted=True
        )
        self._id_set: set[int] = set()
        self._next_id = 0

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._id_set)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._id_set

    def ids(self) -> np.ndarray:
        """The ids stored, ascending."""
        return np.array(sorted(self._id_set), dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Insert ``vectors`` (``[n, dim]``) under ``ids`` (default: the next free ids); return the ids.

        The graph grows as needed. Raises ``ValueError`` on a wrong shape, non-finite values
        or ids already present.
        """
        vectors = check_vectors(vectors, self._dim)
        ids = _check_ids(ids, len(vectors), self._next_id, self.__contains__)
        if not len(ids):
            return ids
        needed = self._graph.get_current_count() + len(ids)
        if needed > self._graph.get_max_elements():
            self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
        self._graph.add_items(
            normalize(vectors), ids, num_threads=self.num_threads, replace_deleted=True
        )
        self._id_set.update(int(i) for i in ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids and their cosine scores, best first: ``([nq, k'], [nq, k'])``.

        ``k' = min(k, len(self))``. Raises ``ValueError`` on a bad shape or ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = check_vectors(queries, self._dim, "queries")
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        self._graph.set_ef(max(self.ef, k))
        labels, distances = self._graph.knn_query(
            normalize(queries), k=k, num_threads=self.num_threads
        )  # (nq, k) each; distance = 1 - cosine
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def delete(self, ids: np.ndarray) -> None:
        """Remove ``ids``; raises ``KeyError`` naming ids that are not in the index."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        missing = [int(i) for i in ids if int(i) not in self._id_set]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        for i in ids:
            self._graph.mark_deleted(int(i))
        self._id_set.difference_update(int(i) for i in ids)

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically (header, ``graph.bin``, ``ids.npy``)."""
        with atomic_directory(directory, "index") as tmp:
            self._graph.save_index(str(tmp / "graph.bin"))
            np.save(tmp / "ids.npy", self.ids())
            write_header(
                tmp,
                "index",
                kind=self.kind,
                dim=self._dim,
                M=self.M,
                ef_construction=self.ef_construction,
                ef=self.ef,
                next_id=self._next_id,
            )

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read an index :meth:`save` wrote; raises :class:`IndexFormatError` if it is not one."""
        header = _header(directory, cls.kind)
        index = cls(
            int(header["dim"]),
            M=header["M"],
            ef_construction=header["ef_construction"],
            ef=header["ef"],
        )
        graph = Path(directory) / "graph.bin"
        index._graph = hnswlib.Index(space="cosine", dim=index.dim)  # replaces the empty one
        try:
            index._graph.load_index(str(graph), allow_replace_deleted=True)
        except RuntimeError as exc:
            raise IndexFormatError(f"{graph}: unreadable HNSW graph ({exc})") from None
        index._id_set = {int(i) for i in np.load(Path(directory) / "ids.npy")}
        index._next_id = int(header["next_id"])
        return index


INDEX_KINDS: dict[str, type[FlatIndex] | type[HNSWIndex]] = {"flat": FlatIndex, "hnsw": HNSWIndex}


def _header(directory: str | Path, kind: str) -> dict:
    header = read_header(directory, "index")
    if header.get("kind") != kind:
        raise IndexFormatError(f"{directory}: a {header.get('kind')!r} index, not {kind!r}")
    return header


def make_index(spec: str, dim: int, **options) -> FlatIndex | HNSWIndex:
    """An empty index from a FAISS-style name: ``"Flat"`` or ``"HNSW<M>"`` (``"HNSW32"``).

    ``"HNSW"`` alone means M=32. ``options`` go to :class:`HNSWIndex` (``ef_construction``,
    ``ef``). Raises ``ValueError`` naming an unknown spec.
    """
    name = spec.strip()
    if name.lower() in ("flat", "flatip", "flatl2"):
        if options:
            raise ValueError(f"Flat takes no options, got {sorted(options)}")
        return FlatIndex(dim)
    match = re.fullmatch(r"(?i)hnsw(\d*)(?:,flat)?", name)
    if match:
        return HNSWIndex(dim, M=int(match.group(1) or 32), **options)
    raise ValueError(f"unknown index {spec!r}: use 'Flat' or 'HNSW<M>' (for example 'HNSW32')")


def load_index(directory: str | Path) -> FlatIndex | HNSWIndex:
    """Open the index saved in ``directory``, whichever kind it is.

    Raises :class:`IndexFormatError` when there is none or it is of an unknown kind.
    """
    kind = read_header(directory, "index").get("kind")
    if kind not in INDEX_KINDS:
        raise IndexFormatError(f"{directory}: unknown index kind {kind!r}")
    return INDEX_KINDS[kind].load(directory)


def describe(index) -> str:
    """A short description for ``llm-rag info``: kind, settings, size and dimension."""
    if isinstance(index, HNSWIndex):
        name = f"HNSW{index.M} (ef_construction={index.ef_construction}, ef={index.ef})"
    elif isinstance(index, FlatIndex):
        name = "Flat"
    else:
        name = type(index).__name__
    return f"{name}, {len(index)} x {index.dim}"


__all__ = ["FlatIndex", "HNSWIndex", "describe", "load_index", "make_index", "normalize"]
