"""The Retriever end to end: files in, cited passages out; save/reload identical; deletion;
clear errors for empty, binary and missing input; and the stdlib docstring quality check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from llm_rag import (
    CallableEmbedder,
    Chunker,
    Embedder,
    EmptyIndexError,
    HashingEmbedder,
    Index,
    IndexFormatError,
    RagError,
    Retriever,
    build_prompt,
    load_index,
)
from llm_rag.evaluation import QUESTIONS, hits_at, stdlib_corpus

DOCS = {
    "cooking.md": "# Bread\n\nKnead the dough for ten minutes. Let it rise for 90 minutes.\n\n"
    "# Rice\n\nRinse the rice, then simmer 18 minutes with the lid on.\n",
    "cars.txt": "Check the tyre pressure monthly. The spare wheel is under the boot floor.\n",
    "code/util.py": 'def parse_port(text):\n    """Parse a TCP port number between 1 and 65535."""\n',
}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "docs"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (root / "empty.txt").write_bytes(b"")
    (root / "old.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


@pytest.mark.parametrize("index_spec", ["Flat", "HNSW32"])
def test_files_in_cited_passages_out(folder, index_spec):
    retriever = Retriever(HashingEmbedder(256), index_spec=index_spec, chunker=Chunker(80, 10))
    report = retriever.add_files([folder])
    assert report.files == 3
    assert report.skipped["binary"] == [str(folder / "logo.png")]
    assert report.skipped["empty"] == [str(folder / "empty.txt")]
    assert report.skipped["undecodable"] == [str(folder / "old.txt")]
    assert "skipped 1 empty, 1 binary, 1 undecodable" in report.summary()
    for chunk in retriever.chunks.values():
        source_text = Path(chunk.source).read_text()
        assert source_text[chunk.start : chunk.end] == chunk.text
    for mode in ("hybrid", "dense", "bm25"):
        hits = retriever.query("how long should the rice simmer", k=2, mode=mode)
        assert "simmer 18 minutes" in hits[0].chunk.text, mode
    hits = retriever.query("port 65535", k=1)
    assert hits[0].chunk.source.endswith("util.py")
    prompt = build_prompt("How long does the rice simmer?", hits)
    assert f"[1] {hits[0].chunk.source}:{hits[0].chunk.start}-{hits[0].chunk.end}" in prompt
    assert prompt.rstrip().endswith("Question: How long does the rice simmer?")


def test_save_reload_query_identical_and_delete(folder, tmp_path):
    retriever = Retriever(HashingEmbedder(256), chunker=Chunker(80, 10))
    retriever.add_files([folder])
    questions = ["rise time for bread dough", "spare wheel", "tcp port", "lid"]
    before = {
        (q, m): retriever.query(q, 3, mode=m)
        for q in questions
        for m in ("hybrid", "dense", "bm25")
    }
    retriever.save(tmp_path / "ix")
    loaded = Retriever.load(tmp_path / "ix")
    after = {
        (q, m): loaded.query(q, 3, mode=m) for q in questions for m in ("hybrid", "dense", "bm25")
    }
    assert after == before
    assert loaded.info()["embedder"] == "hash:256" and loaded.info()["chunks"] == len(retriever)

    extra = tmp_path / "new.txt"  # add a document, then delete it: it no longer appears
    extra.write_text("The zeppelin hangar opens at dawn.")
    loaded.add_files([extra])
    assert loaded.query("zeppelin hangar", 1)[0].chunk.source == str(extra)
    assert loaded.delete_source(str(extra)) == 1
    loaded.save(tmp_path / "ix")
    reloaded = Retriever.load(tmp_path / "ix")
    for mode in ("hybrid", "dense", "bm25"):
        sources = {h.chunk.source for h in reloaded.query("zeppelin hangar", 10, mode=mode)}
        assert str(extra) not in sources
    assert len(reloaded) == len(retriever)


def test_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RagError, match=r"nothing to index in .*empty: 0 files"):
        Retriever(HashingEmbedder(64)).add_files([empty])
    (empty / "blob.bin").write_bytes(b"\0\1\2")
    (empty / "none.txt").write_bytes(b"")
    with pytest.raises(RagError, match="skipped 1 empty, 1 binary"):
        Retriever(HashingEmbedder(64)).add_files([empty])
    with pytest.raises(EmptyIndexError, match="index is empty"):
        Retriever(HashingEmbedder(64)).query("anything")
    with pytest.raises(
        IndexFormatError, match=r"no llm-rag index here; build one with `llm-rag index"
    ):
        Retriever.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown mode"):
        retriever = Retriever(HashingEmbedder(64))
        retriever.add_texts(["some words"])
        retriever.query("words", mode="fuzzy")
    retriever.save(tmp_path / "ix")
    with pytest.raises(IndexFormatError, match="64-dim, the embedder makes 32"):
        Retriever.load(tmp_path / "ix", embedder=HashingEmbedder(32))
    (tmp_path / "ix" / "chunks.jsonl").write_text("")
    with pytest.raises(IndexFormatError, match="damaged: 0 chunks, 1 vectors"):
        Retriever.load(tmp_path / "ix")
    with pytest.raises(ValueError, match="question is empty"):
        build_prompt("  ", [])


def test_protocols_and_callable_embedder(tmp_path):
    embedder = CallableEmbedder(lambda texts: np.ones((len(texts), 8)) * 2, dim=8)
    assert isinstance(embedder, Embedder) and isinstance(HashingEmbedder(), Embedder)
    assert np.allclose(np.linalg.norm(embedder.embed(["a", "b"]), axis=1), 1.0)
    retriever = Retriever(embedder, index_spec="Flat")
    assert isinstance(retriever.index, Index)
    retriever.add_texts(["alpha", "beta"])
    retriever.save(tmp_path / "ix")
    assert isinstance(load_index(tmp_path / "ix" / "dense"), Index)
    with pytest.raises(ValueError, match=r"shape \(1, 3\)"):
        CallableEmbedder(lambda texts: np.ones((1, 3)), dim=8).embed(["x"])


def test_llm_tokenizer_satisfies_the_tokenizer_protocol():
    from llm_tokenizer import Tokenizer

    demo = Path(__file__).parents[2] / "llm-infer/src/llm_infer/demo_model"
    chunks = Chunker(32, 4, tokenizer=Tokenizer.from_file(demo)).chunk("word " * 100)
    assert len(chunks) > 3


def test_hashing_embedder_is_deterministic_across_processes():
    import subprocess

    code = "from llm_rag import HashingEmbedder; print(HashingEmbedder(64).embed(['os.path.join'])[0].tolist())"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1


def test_stdlib_docstring_retrieval_quality():
    """45 hand-written questions over ~2,000 stdlib docstrings; the answer's docstring must be
    in the top 3. The dense side is the hashing embedder (words and character trigrams): no
    model, deterministic, so the figure means the same on every machine."""
    corpus = stdlib_corpus()
    assert len(QUESTIONS) >= 30 and len(corpus) > 1000
    retriever = Retriever(HashingEmbedder(1024), index_spec="HNSW32")
    retriever.add_texts(list(corpus.values()), list(corpus))
    figures = {}
    for mode in ("hybrid", "dense", "bm25"):
        share, missed = hits_at(
            lambda q, k, m=mode: [h.chunk.source for h in retriever.query(q, k, mode=m)]
        )
        figures[mode] = share
        print(f"{mode}: top-3 {share:.3f}; missed {missed}")
    assert figures["hybrid"] >= 0.90, figures
    assert figures["dense"] >= 0.80 and figures["bm25"] >= 0.80, figures


def test_save_never_replaces_a_folder_of_other_files(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("mine")
    retriever = Retriever(HashingEmbedder(64))
    retriever.add_texts(["words"])
    with pytest.raises(RagError, match="exists and is not an llm-rag manifest; refusing"):
        retriever.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]
    (tmp_path / "empty").mkdir()
    retriever.save(tmp_path / "empty")  # an empty folder is fine, and so is an index
    retriever.save(tmp_path / "empty")
    assert len(Retriever.load(tmp_path / "empty")) == 1


def test_source_lines_show_what_the_answer_cites():
    from llm_rag import Chunk, Hit
    from llm_rag.retriever import source_lines

    hits = [Hit(i, Chunk(f"text {i}", f"doc{i}.md", 0, 6), 1.0) for i in range(3)]
    assert source_lines("Both [3] and [1] say so; [9] is not a source.", hits) == [
        "Sources:",
        "[1] doc0.md:0-6",
        "[3] doc2.md:0-6",
    ]
    assert source_lines("No citations.", hits)[0] == "Sources given (none cited):"
    assert len(source_lines("No citations.", hits)) == 4
