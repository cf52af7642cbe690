"""/rag DIR in the REPL: index a folder (or open an index), answer with numbered passages, show
the cited sources under the answer; clear messages for a missing or empty folder."""

from __future__ import annotations

from llm_rag import HashingEmbedder, Retriever
from llm_repl import RemoteBackend

from .test_repl_app import ENTER, run_repl


def test_rag_folder_answers_with_sources(fake_server, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("Green tea steeps for two minutes at 80 degrees.")
    (docs / "bikes.md").write_text("Oil the bicycle chain every 300 kilometres.")
    (docs / "logo.png").write_bytes(b"\x89PNG\0\0")
    keys = f"/rag {docs}" + ENTER + "how long does green tea steep?" + ENTER
    keys += "/rag off" + ENTER + "plain question" + ENTER
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    assert f"indexed {docs}: 2 files" in text and "skipped 1 binary" in text
    sent = fake_server.requests[0]["messages"][-1]["content"]
    assert sent.startswith("Answer the question using only the numbered sources")
    assert f"[1] {docs / 'tea.md'}:0-47\nGreen tea steeps" in sent
    assert sent.endswith("Question: how long does green tea steep?")
    assert f"Sources:\n[1] {docs / 'tea.md'}:0-47" in text  # the echoed reply cites [1]
    second = fake_server.requests[1]["messages"]
    assert second[-1]["content"] == "plain question"  # /rag off
    assert second[0]["content"] == "how long does green tea steep?"  # passages not kept


def test_rag_opens_a_saved_index(fake_server, tmp_path):
    retriever = Retriever(HashingEmbedder(64))
    retriever.add_texts(["The boot floor hides the spare wheel."], ["car-manual"])
    retriever.save(tmp_path / "ix")
    text, _ = run_repl(
        RemoteBackend(fake_server.url), f"/rag {tmp_path / 'ix'}" + ENTER + "spare wheel?" + ENTER
    )
    assert f"opened the index {tmp_path / 'ix'} (1 passages)" in text
    assert "[1] car-manual:0-37" in fake_server.requests[0]["messages"][-1]["content"]


def test_rag_errors_are_one_line(fake_server, tmp_path):
    (tmp_path / "empty").mkdir()
    keys = (
        f"/rag {tmp_path / 'missing'}"
        + ENTER
        + f"/rag {tmp_path / 'empty'}"
        + ENTER
        + "/rag"
        + ENTER
    )
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    assert f"{tmp_path / 'missing'}: no such file or directory" in text
    assert f"nothing to index in {tmp_path / 'empty'}: 0 files" in text
    assert "/rag: off" in text
    assert fake_server.requests == []
