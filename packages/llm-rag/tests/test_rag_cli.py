"""The llm-rag console script: index, query, info, and one-line errors with no traceback."""

from __future__ import annotations

import json

import pytest
from llm_rag.cli import main


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "tea.md").write_text(
        "Green tea steeps for two minutes at 80 degrees.\n\nBlack tea needs boiling water."
    )
    (root / "bikes.txt").write_text("Oil the bicycle chain every 300 kilometres.")
    (root / "pic.jpg").write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF\0")
    return root


def test_index_query_info(docs, tmp_path, capsys):
    out = tmp_path / "ix"
    assert (
        main(["index", str(docs), "--out", str(out), "--embedder", "hash:128", "--index", "Flat"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "indexed 2 files" in printed and "skipped 1 binary" in printed
    assert f"skipped (binary): {docs / 'pic.jpg'}" in printed

    assert main(["query", str(out), "how long does green tea steep", "-k", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"[1] {docs / 'tea.md'}:0-" in printed and "two minutes" in printed

    assert main(["query", str(out), "chain oil", "-k", "2", "--mode", "bm25", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passages"][0]["source"] == str(docs / "bikes.txt")
    assert result["passages"][0]["text"] == "Oil the bicycle chain every 300 kilometres."
    assert len(result["passages"]) == 1  # BM25 returns only passages sharing a word

    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hash:128" in printed and "Flat, 2 x 128" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["query", "{tmp}/none", "q"], "no llm-rag index here; build one with `llm-rag index"),
        (["info", "{tmp}/none"], "no llm-rag index here"),
        (
            ["index", "{tmp}/empty", "--out", "{tmp}/ix"],
            "nothing to index in {tmp}/empty: no files found",
        ),
        (
            ["index", "{tmp}/only-binary", "--out", "{tmp}/ix"],
            "nothing to index in {tmp}/only-binary: 0 files, 0 B, 0 chunks; skipped 1 empty, 1 binary",
        ),
        (
            ["index", "{tmp}/missing", "--out", "{tmp}/ix"],
            "{tmp}/missing: no such file or directory",
        ),
        (["index", "{tmp}/*.nothing", "--out", "{tmp}/ix"], "the pattern matches no files"),
        (
            ["index", "{tmp}/only-binary", "--out", "{tmp}/ix", "--index", "IVF4"],
            "unknown index 'IVF4'",
        ),
        (
            ["index", "{tmp}/only-binary", "--out", "{tmp}/ix", "--embedder", "bert"],
            "unknown embedder 'bert'",
        ),
        (["index", "{tmp}/only-binary", "--out", "{tmp}/ix", "--overlap", "500"], "overlap < size"),
        (["query", "{tmp}/none", "q", "--answer"], "--answer needs --model"),
    ],
)
def test_errors_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-binary").mkdir()
    (tmp_path / "only-binary" / "a.bin").write_bytes(b"\0\0\1")
    (tmp_path / "only-binary" / "b.txt").write_bytes(b"")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-rag: error: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "ix").exists()  # nothing half-written


@pytest.mark.slow
def test_answer_with_the_demo_model(docs, tmp_path, capsys):
    out = tmp_path / "ix"
    assert (
        main(["index", str(docs), "--out", str(out), "--chunk-size", "120", "--overlap", "0"]) == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "query",
                str(out),
                "green tea",
                "-k",
                "2",
                "--answer",
                "--model",
                "demo",
                "--max-tokens",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"[1] {docs / 'tea.md'}:0-" in printed and "Sources" in printed


def test_large_files_are_announced_as_streamed(docs, tmp_path, capsys, monkeypatch):
    import llm_rag.cli

    monkeypatch.setattr(
        llm_rag.cli, "LARGE_FILE", 50
    )  # bytes: tea.md (79 B) is large, bikes (43) not
    assert main(["index", str(docs), "--out", str(tmp_path / "ix"), "--embedder", "hash:64"]) == 0
    printed = capsys.readouterr().out
    assert f"{docs / 'tea.md'}: 0.0 MB, streamed in blocks" in printed
    assert f"{docs / 'bikes.txt'}: " not in printed
