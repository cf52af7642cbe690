"""/rag DIR in the REPL: index a folder (or open an index), answer with numbered passages, show
the cited sources under the answer; clear messages for a missing or empty folder."""

from __future__ import annotations

import pytest
from llm_rag import HashingEmbedder, Retriever
from llm_repl import RemoteBackend
from llm_repl.backends import BackendError

from .conftest import word_tokens
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


TOPICS = ["tea", "coffee", "cocoa", "mate", "chai"]


def drinks(tmp_path):
    """Five documents of about 25 words that all answer the question, so all five are hits."""
    docs = tmp_path / "drinks"
    docs.mkdir()
    for name in TOPICS:
        (docs / f"{name}.md").write_text(
            f"How to brew {name}: warm the pot, measure the {name}, pour water just off the boil, "
            f"wait a few minutes, then strain the {name} and serve it hot in a warmed cup."
        )
    return docs


def given(prompt: str) -> list[str]:
    """The ``[n] source:start-end`` lines of a prompt built by llm_rag.build_prompt."""
    return [line for line in prompt.splitlines() if line.startswith("[")]


class SmallContextBackend:
    """A double of the local backend over a 120-token model (a word a token): like llm-infer,
    it refuses a prompt that leaves no room for max_tokens (unset: one token)."""

    name = "small (local)"
    context = 120

    def __init__(self) -> None:
        self.sent: list[list[dict]] = []

    def context_budget(self):
        return word_tokens, self.context

    async def list_models(self) -> list[str]:
        return ["small"]

    async def stream(self, messages, **sampling):
        if word_tokens(messages) + (sampling.get("max_tokens") or 1) > self.context:
            raise BackendError("context length exceeded: the limit is 120 tokens")
        self.sent.append([dict(m) for m in messages])  # the REPL edits its history later
        yield "I do not know."


def test_rag_fits_passages_into_a_small_local_context(tmp_path):
    backend = SmallContextBackend()
    question = "how do I brew it?"
    text, repl = run_repl(backend, f"/rag {drinks(tmp_path)}" + ENTER + question + ENTER)
    assert "context length exceeded" not in text
    sent = backend.sent[0]
    lines = given(sent[-1]["content"])
    assert 1 <= len(lines) < 5  # five passages do not fit in 120 tokens
    assert word_tokens(sent) + 30 <= 120  # 30: a quarter of the context kept for the reply
    ranked = [
        f"[{n}] {h.chunk.source}:" for n, h in enumerate(repl.rag.retriever.query(question, 5), 1)
    ]
    top = ranked[: len(lines)]  # the lowest-ranked are the ones dropped
    assert all(line.startswith(r) for line, r in zip(lines, top, strict=True))
    shown = text.split("Sources given (none cited):")[1]
    assert all(line in shown for line in lines) and f"[{len(lines) + 1}] " not in shown


def test_rag_fits_the_context_a_server_reports(fake_server, tmp_path):
    fake_server.context = 130
    keys = f"/rag {drinks(tmp_path)}" + ENTER + "how do I brew it?" + ENTER
    keys += "/set max_tokens 90" + ENTER + "how do I brew it?" + ENTER
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    assert "context length exceeded" not in text
    assert len(fake_server.requests) == 1  # the second question was not sent
    assert 1 <= len(given(fake_server.requests[0]["messages"][-1]["content"])) < 5
    flat = " ".join(text.split())  # rich wraps long lines
    assert "/rag: the model's context (130 tokens) cannot hold one passage after the" in flat
    assert "and 90 new tokens: index with a smaller --chunk-size" in flat


@pytest.mark.slow
def test_rag_with_the_demo_model_fits_its_256_token_context(tmp_path):
    from llm_repl import LocalBackend

    backend = LocalBackend("demo")
    keys = "/set max_tokens 16" + ENTER + f"/rag {drinks(tmp_path)}" + ENTER
    text, repl = run_repl(backend, keys + "how do I brew it?" + ENTER)
    assert "error" not in text and "context length exceeded" not in text
    shown = text.split("Sources")[1]
    assert "[1] " in shown and "[5] " not in shown  # five passages do not fit in 256 tokens
    assert repl.conversation.messages[-1]["role"] == "assistant"
