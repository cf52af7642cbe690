"""Chunking and loading: offsets point at the source text, sizes and overlaps hold, cuts fall
on paragraph and sentence ends, streaming equals reading whole, and odd files are classified."""

from __future__ import annotations

import itertools
import subprocess
import sys
import tracemalloc
from pathlib import Path

import llm_rag.chunking as chunking
import llm_rag.loading as loading
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_rag import Chunker, RagError, find_files
from llm_rag.loading import classify, read_blocks

DEMO_TOKENIZER = Path(__file__).parents[2] / "llm-infer/src/llm_infer/demo_model"


def sample_text(paragraphs: int = 30) -> str:
    out = []
    for p in range(paragraphs):
        sentences = [
            f"Paragraph {p} sentence {s} says something about topic {p * 7 + s}."
            for s in range(1 + p % 5)
        ]
        out.append(" ".join(sentences))
    return "\n\n".join(out) + "\n"


def check_chunks(text: str, chunks, chunker: Chunker) -> None:
    """Offsets are exact, sizes hold, and no non-space character is lost."""
    covered = [False] * len(text)
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert chunker.measure(chunk.text) <= chunker.size
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    lost = [i for i, c in enumerate(text) if not c.isspace() and not covered[i]]
    assert not lost, f"characters dropped at {lost[:5]}"
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)


def test_chunks_end_at_paragraphs_and_overlap():
    text = sample_text()
    chunker = Chunker(300, 60)
    chunks = chunker.chunk(text, "doc.md")
    check_chunks(text, chunks, chunker)
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert text[chunk.end : chunk.end + 2] == "\n\n" or chunk.text.endswith(".")
    for a, b in itertools.pairwise(chunks):
        assert b.start >= a.start and a.end - b.start <= 60  # overlap at most 60 characters
    assert all(c.source == "doc.md" for c in chunks)


def test_sentence_cuts_inside_a_long_paragraph():
    text = " ".join(f"Sentence number {i} is here." for i in range(100))
    chunks = Chunker(200, 0).chunk(text)
    assert all(c.text.endswith(".") for c in chunks)
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))  # no overlap


def test_words_and_runs_longer_than_a_chunk_are_cut():
    text = "x" * 1000 + " tail"
    chunker = Chunker(128, 16)
    chunks = chunker.chunk(text)
    check_chunks(text, chunks, chunker)
    with pytest.raises(ValueError, match="overlap < size"):
        Chunker(100, 100)


def test_token_chunks_fit_a_real_tokenizer():
    from llm_tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(DEMO_TOKENIZER)
    text = sample_text(20)
    chunker = Chunker(64, 8, tokenizer=tokenizer)
    chunks = chunker.chunk(text)
    assert chunker.unit == "tokens"
    for chunk in chunks:
        assert len(tokenizer.encode(chunk.text)) <= 64
    assert sum(len(tokenizer.encode(c.text)) for c in chunks) >= len(tokenizer.encode(text))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["word", "Other.", "x" * 40, " ", "\n", "\n\n", "end!", "é", "\t"]),
        max_size=200,
    ),
    st.integers(8, 120),
    st.integers(0, 7),
)
def test_any_text_any_size(parts, size, overlap):
    text = "".join(parts)
    chunker = Chunker(size, overlap)
    check_chunks(text, chunker.chunk(text), chunker)


def test_stream_equals_whole(monkeypatch):
    text = sample_text(400)
    chunker = Chunker(300, 40)
    whole = chunker.chunk(text, "s")
    monkeypatch.setattr(chunking, "STREAM_WINDOW", 1)  # re-cut the window at every block
    streamed = list(
        chunker.chunk_stream((text[i : i + 997] for i in range(0, len(text), 997)), "s")
    )
    assert streamed == whole


def test_find_files(tmp_path):
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("b")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("hidden")
    assert find_files([tmp_path]) == [tmp_path / "a.md", tmp_path / "sub" / "b.py"]
    assert find_files([f"{tmp_path}/**/*.py", tmp_path / "a.md"]) == [
        tmp_path / "a.md",
        tmp_path / "sub" / "b.py",
    ]
    with pytest.raises(RagError, match="no such file or directory"):
        find_files([tmp_path / "missing"])
    with pytest.raises(RagError, match="matches no files"):
        find_files([f"{tmp_path}/*.rst"])


def test_classify(tmp_path):
    cases = {
        "empty.txt": b"",
        "blank.txt": b"\n\n  \n",
        "image.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "latin1.txt": "café".encode("latin-1"),
        "good.txt": "naïve café\n".encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    got = {name: classify(tmp_path / name) for name in cases}
    assert got == {
        "empty.txt": "empty",
        "blank.txt": None,  # text, but it makes no chunks: the Retriever counts it empty
        "image.png": "binary",
        "latin1.txt": "undecodable",
        "good.txt": None,
    }


def test_bom_is_dropped_and_offsets_count_characters(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffnaïve text. Second sentence.".encode())
    text = "".join(read_blocks(path, block_chars=4))
    chunks = list(Chunker(16, 0).chunk_stream(read_blocks(path, block_chars=4), "bom.txt"))
    assert text.startswith("naïve")
    assert [text[c.start : c.end] for c in chunks] == [c.text for c in chunks]


def write_big(path: Path, megabytes: int) -> str:
    paragraph = sample_text(8)
    with open(path, "w") as f:
        for _ in range(megabytes * 1_000_000 // len(paragraph) + 1):
            f.write(paragraph)
    return paragraph


def test_large_file_is_streamed_in_bounded_memory(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    write_big(path, 2)
    monkeypatch.setattr(loading, "BLOCK_BYTES", 1 << 16)
    chunker = Chunker(400, 50)
    tracemalloc.start()
    count, last = 0, None
    for chunk in chunker.chunk_stream(read_blocks(path, 1 << 16), str(path)):
        count, last = count + 1, chunk
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, f"peak {peak} bytes for a 2 MB file"  # never the file at once
    assert count > 4000 and last.end <= path.stat().st_size
    assert classify(path) is None


@pytest.mark.slow
def test_100_mb_file_is_streamed(tmp_path):
    """A fresh process chunks a 100 MB file; its peak memory grows far less than the file."""
    path = tmp_path / "big.txt"
    write_big(path, 100)
    code = (
        "import resource, sys\n"
        "from llm_rag import Chunker\n"
        "from llm_rag.loading import read_blocks\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "n = sum(1 for _ in Chunker().chunk_stream(read_blocks(sys.argv[1]), 'big'))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(n, (after - before) * 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    count, grown = map(int, out.stdout.split())
    assert grown < 30_000_000, f"peak memory grew {grown} bytes for a 100 MB file"
    assert count > 200_000
