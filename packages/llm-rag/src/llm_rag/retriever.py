"""The Retriever: chunks, their vectors (dense index), their words (BM25) and where they came
from, kept together, queried together, saved and loaded together; and prompt assembly.

A saved retriever is a directory::

    manifest.json   format, format_version, embedder spec, chunking, counts
    chunks.jsonl    one chunk a line: id, text, source, start, end
    dense/          the vector index (index.json + its files)
    bm25/           the lexical index (bm25.json + docs.jsonl)

written atomically as a whole (see :func:`llm_rag.persist.atomic_directory`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_rag.bm25 import BM25Index, reciprocal_rank_fusion
from llm_rag.chunking import Chunk, Chunker
from llm_rag.embedders import DEFAULT_SPEC, load_embedder
from llm_rag.errors import EmptyIndexError, IndexFormatError, RagError
from llm_rag.index import describe, load_index, make_index
from llm_rag.loading import LoadReport, classify, find_files, read_blocks
from llm_rag.persist import atomic_directory, read_header, write_header
from llm_rag.protocols import Embedder, Index

MODES = ("hybrid", "dense", "bm25")
CITATION = re.compile(r"\[(\d+)\]")  # [n] in an answer
BATCH = 64  # chunks embedded and indexed at a time
CANDIDATES = 50  # each ranking's depth before fusion (at least 4 k)


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk, its id in the index and its score (cosine, BM25 or fused, by mode)."""

    id: int
    chunk: Chunk
    score: float


class Retriever:
    """Documents in, passages out: ``add_files`` / ``add_texts``, ``query``, ``delete``, ``save``.

    ``embedder`` turns text into vectors (default: :class:`~llm_rag.embedders.HashingEmbedder`);
    ``index`` stores them (default: ``make_index(index_spec, embedder.dim)``, HNSW with M=32);
    a BM25 index is kept beside it for lexical and hybrid queries.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        index: Index | None = None,
        *,
        chunker: Chunker | None = None,
        index_spec: str = "HNSW32",
        bm25: BM25Index | None = None,
    ) -> None:
        self.embedder = embedder if embedder is not None else load_embedder(DEFAULT_SPEC)
        self.index = index if index is not None else make_index(index_spec, self.embedder.dim)
        if self.index.dim != self.embedder.dim:
            raise RagError(
                f"the index holds {self.index.dim}-dim vectors, the embedder makes {self.embedder.dim}"
            )
        self.chunker = chunker if chunker is not None else Chunker()
        self.bm25 = bm25 if bm25 is not None else BM25Index()
        self.chunks: dict[int, Chunk] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.chunks)

    # -- adding and deleting ---------------------------------------------------------------

    def add_chunks(self, chunks: Sequence[Chunk]) -> np.ndarray:
        """Embed and index ``chunks``; return their ids."""
        if not chunks:
            return np.zeros(0, dtype=np.int64)
        texts = [c.text for c in chunks]
        ids = np.arange(self._next_id, self._next_id + len(chunks), dtype=np.int64)
        self.index.add(self.embedder.embed(texts), ids)  # [n, d] float32
        self.bm25.add(texts, ids)
        self.chunks.update(zip(ids.tolist(), chunks, strict=True))
        self._next_id += len(chunks)
        return ids

    def add_texts(self, texts: Iterable[str], sources: Iterable[str] | None = None) -> np.ndarray:
        """Chunk and index in-memory texts (``sources`` name them; default ``text-N``); return ids."""
        texts = list(texts)
        sources = list(sources) if sources is not None else [f"text-{i}" for i in range(len(texts))]
        if len(sources) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(sources)} sources")
        chunks = [c for t, s in zip(texts, sources, strict=True) for c in self.chunker.chunk(t, s)]
        return self.add_chunks(chunks)

    def add_files(
        self,
        paths: Sequence[str | Path],
        *,
        progress: Callable[[Path, int], None] | None = None,
        on_file: Callable[[Path, int], None] | None = None,
    ) -> LoadReport:
        """Index the UTF-8 files named by ``paths`` (files, folders, globs), streamed in blocks.

        Binary, undecodable, unreadable and empty files are skipped and listed in the report.
        ``progress(path, n_bytes)`` is called as bytes are read; ``on_file(path, size)`` before
        each text file. Raises :class:`RagError` for a path that does not exist, and when
        nothing indexable is found (the message counts what was skipped).
        """
        report = LoadReport()
        for path in find_files(paths):
            reason = classify(path)
            if reason is not None:
                report.skipped[reason].append(str(path))
                if progress:
                    progress(path, path.stat().st_size)
                continue
            size = path.stat().st_size
            if on_file:
                on_file(path, size)
            made = self._add_stream(path, progress)
            if made == 0:
                report.skipped["empty"].append(str(path))
                continue
            report.files += 1
            report.bytes += size
            report.chunks += made
        if report.files == 0:
            raise RagError(f"nothing to index in {', '.join(map(str, paths))}: {report.summary()}")
        return report

    def _add_stream(self, path: Path, progress: Callable[[Path, int], None] | None) -> int:
        def blocks():
            for block in read_blocks(path):
                if progress:
                    progress(path, len(block.encode("utf-8")))
                yield block

        batch, made = [], 0
        for chunk in self.chunker.chunk_stream(blocks(), str(path)):
            batch.append(chunk)
            if len(batch) == BATCH:
                made += len(self.add_chunks(batch))
                batch = []
        return made + len(self.add_chunks(batch))

    def delete(self, ids: Iterable[int]) -> None:
        """Remove chunks by id from both indexes; raises ``KeyError`` for unknown ids."""
        ids = [int(i) for i in ids]
        missing = [i for i in ids if i not in self.chunks]
        if missing:
            raise KeyError(f"no chunks with ids {missing[:5]}")
        self.index.delete(np.array(ids, dtype=np.int64))
        self.bm25.delete(ids)
        for i in ids:
            del self.chunks[i]

    def delete_source(self, source: str | Path) -> int:
        """Remove every chunk of the document ``source``; return how many there were."""
        ids = [i for i, c in self.chunks.items() if c.source == str(source)]
        if ids:
            self.delete(ids)
        return len(ids)

    # -- querying --------------------------------------------------------------------------

    def query(self, text: str, k: int = 5, *, mode: str = "hybrid") -> list[Hit]:
        """The ``k`` chunks that best answer ``text``, best first.

        ``mode``: ``"dense"`` (cosine of embeddings), ``"bm25"`` (words) or ``"hybrid"``
        (both rankings fused by reciprocal rank, k=60). Raises :class:`EmptyIndexError` when
        nothing is indexed, ``ValueError`` for a bad mode or ``k``.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not self.chunks:
            raise EmptyIndexError("the index is empty: add documents before asking questions")
        depth = k if mode != "hybrid" else max(CANDIDATES, 4 * k)
        rankings, scores = [], {}
        if mode in ("dense", "hybrid"):
            ids, sims = self.index.search(self.embedder.embed([text]), depth)  # (1, k') each
            rankings.append(ids[0].tolist())
            scores = dict(zip(ids[0].tolist(), sims[0].tolist(), strict=True))
        if mode in ("bm25", "hybrid"):
            ids, bm = self.bm25.search(text, depth)
            rankings.append(ids.tolist())
            scores = dict(zip(ids.tolist(), bm.tolist(), strict=True))
        if mode == "hybrid":
            ranked = reciprocal_rank_fusion(rankings)[:k]
        else:
            ranked = [(i, scores[i]) for i in rankings[0][:k]]
        return [Hit(i, self.chunks[i], float(s)) for i, s in ranked]

    # -- persistence -----------------------------------------------------------------------

    def info(self) -> dict:
        """What ``llm-rag info`` shows: counts, embedder, index, chunking, sources."""
        return {
            "chunks": len(self.chunks),
            "sources": len({c.source for c in self.chunks.values()}),
            "embedder": getattr(self.embedder, "spec", type(self.embedder).__name__),
            "dim": self.embedder.dim,
            "index": describe(self.index),
            "chunking": f"{self.chunker.size} {self.chunker.unit}, overlap {self.chunker.overlap}",
        }

    def save(self, directory: str | Path) -> None:
        """Write everything to ``directory`` atomically (replacing what was there).

        The embedder is recorded by its ``spec`` (``hash:1024``, ``core:SRC``), so
        :meth:`load` can rebuild it; an embedder without one must be passed to :meth:`load`.
        """
        with atomic_directory(directory, "manifest") as tmp:
            self.index.save(tmp / "dense")
            self.bm25.save(tmp / "bm25")
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for id_, chunk in self.chunks.items():
                    f.write(json.dumps({"id": id_, **chunk.to_json()}, ensure_ascii=False) + "\n")
            write_header(
                tmp,
                "manifest",
                embedder=getattr(self.embedder, "spec", None),
                dim=self.embedder.dim,
                chunk_size=self.chunker.size,
                overlap=self.chunker.overlap,
                unit=self.chunker.unit,
                chunks=len(self.chunks),
                next_id=self._next_id,
            )

    @classmethod
    def load(
        cls, directory: str | Path, embedder: Embedder | None = None, *, tokenizer=None
    ) -> Retriever:
        """Open a retriever :meth:`save` wrote.

        ``embedder`` defaults to the one the manifest names; ``tokenizer`` is needed to add
        more text to an index chunked by tokens. Raises :class:`IndexFormatError` when
        ``directory`` holds no index (the message says how to build one), is damaged, or
        disagrees with the embedder given.
        """
        directory = Path(directory)
        if not (directory / "manifest.json").is_file():
            raise IndexFormatError(
                f"{directory}: no llm-rag index here; build one with "
                f"`llm-rag index PATHS --out {directory}`"
            )
        header = read_header(directory, "manifest")
        if embedder is None:
            if not header.get("embedder"):
                raise IndexFormatError(
                    f"{directory}: built with a custom embedder; pass it to load()"
                )
            embedder = load_embedder(header["embedder"])
        if embedder.dim != header["dim"]:
            raise IndexFormatError(
                f"{directory}: vectors are {header['dim']}-dim, the embedder makes {embedder.dim}"
            )
        if header["unit"] == "tokens" and tokenizer is None:
            chunker = Chunker(header["chunk_size"], header["overlap"], tokenizer=_NoTokenizer())
        else:
            chunker = Chunker(header["chunk_size"], header["overlap"], tokenizer=tokenizer)
        retriever = cls(
            embedder,
            load_index(directory / "dense"),
            chunker=chunker,
            bm25=BM25Index.load(directory / "bm25"),
        )
        with open(directory / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                data = json.loads(line)
                retriever.chunks[int(data["id"])] = Chunk.from_json(data)
        retriever._next_id = int(header["next_id"])
        counts = (
            len(retriever.chunks),
            len(retriever.index),
            len(retriever.bm25),
            header["chunks"],
        )
        if len(set(counts)) != 1:
            raise IndexFormatError(
                f"{directory}: damaged: {counts[0]} chunks, {counts[1]} vectors, "
                f"{counts[2]} BM25 documents, the manifest says {counts[3]}"
            )
        return retriever


class _NoTokenizer:
    """Stands in for the tokenizer of a token-chunked index opened only to be queried."""

    def encode(self, text: str) -> list[int]:
        raise RagError("this index is chunked by tokens: pass its tokenizer to add more text")


PROMPT_HEADER = (
    "Answer the question using only the numbered sources below. Cite the sources you use "
    "by their numbers in square brackets, like [1]. If the sources do not hold the answer, "
    "say that you do not know."
)


def cite(n: int, chunk: Chunk) -> str:
    """``[n] source:start-end``, the line a citation refers to."""
    return f"[{n}] {chunk.source}:{chunk.start}-{chunk.end}"


def source_lines(answer: str, hits: Sequence[Hit]) -> list[str]:
    """Lines to print under ``answer``: ``Sources:`` and the ``[n] source:start-end`` it cites;
    when it cites none, every passage it was given, headed ``Sources given (none cited):``."""
    cited = sorted({int(n) for n in CITATION.findall(answer) if 1 <= int(n) <= len(hits)})
    if cited:
        return ["Sources:", *(cite(n, hits[n - 1].chunk) for n in cited)]
    return ["Sources given (none cited):", *(cite(n, h.chunk) for n, h in enumerate(hits, 1))]


def build_prompt(question: str, chunks: Sequence[Chunk | Hit]) -> str:
    """A prompt that gives the model ``chunks`` as numbered sources ``[1]..[n]`` and asks it
    to answer ``question`` from them, citing the numbers. Raises ``ValueError`` for an empty
    question."""
    if not question.strip():
        raise ValueError("the question is empty")
    parts = [PROMPT_HEADER, ""]
    for n, item in enumerate(chunks, start=1):
        chunk = item.chunk if isinstance(item, Hit) else item
        parts += [f"{cite(n, chunk)}", chunk.text, ""]
    parts.append(f"Question: {question.strip()}")
    return "\n".join(parts)
