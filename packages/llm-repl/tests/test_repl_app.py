"""The REPL driven through prompt-toolkit's pipe input, with a recording rich console."""

from __future__ import annotations

import asyncio
import io
import json

from llm_repl import Conversation, RemoteBackend, Repl
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

ENTER = "\r"
ALT_ENTER = "\x1b\r"


def run_repl(backend, keys: str, history_path=None, conversation=None) -> tuple[str, Repl]:
    """Type ``keys`` into a real prompt-toolkit session; the console's text when it ends."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100, record=True)

    async def go() -> Repl:
        with create_pipe_input() as pipe:
            pipe.send_text(keys)
            pipe.close()  # Ctrl-D at the end: EOF
            repl = Repl(
                backend, console=console, history_path=history_path, conversation=conversation
            )
            repl.session = PromptSession(
                input=pipe, output=DummyOutput(), history=repl.session.history,
                key_bindings=repl.session.key_bindings, multiline=True,
            )  # fmt: skip
            assert await repl.run() == 0
            return repl

    repl = asyncio.run(go())
    return console.export_text(), repl


def test_question_is_answered_with_rendered_markdown_and_stats(fake_server):
    text, repl = run_repl(RemoteBackend(fake_server.url), "hello there" + ENTER)
    assert "You said hello there." in text  # **bold** rendered, markers gone
    assert "print('hi')" in text  # the code block
    assert "**" not in text
    assert "tokens/s, first token" in text
    assert repl.conversation.messages[-1]["role"] == "assistant"
    assert fake_server.requests[0]["stream"] is True


def test_alt_enter_makes_a_multi_line_message(fake_server):
    run_repl(RemoteBackend(fake_server.url), "line one" + ALT_ENTER + "line two" + ENTER)
    assert fake_server.requests[0]["messages"][-1]["content"] == "line one\nline two"


def test_system_set_and_reset(fake_server):
    keys = "/system Be brief." + ENTER + "/set temperature 0.7" + ENTER + "/set top_k 5" + ENTER
    keys += "first" + ENTER + "/reset" + ENTER + "second" + ENTER
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    first, second = fake_server.requests
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
    ]
    assert first["temperature"] == 0.7 and first["top_k"] == 5
    assert second["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "second"},
    ]
    assert "conversation cleared" in text


def test_set_rejects_bad_values_and_shows_settings(fake_server):
    keys = (
        "/set temperature hot"
        + ENTER
        + "/set colour red"
        + ENTER
        + "/set seed 3"
        + ENTER
        + "/set"
        + ENTER
    )
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    assert "temperature must be a number in [0, 2], got 'hot'" in text
    assert "unknown setting 'colour'" in text
    assert "settings: seed=3" in text


def test_save_and_load(fake_server, tmp_path):
    path = tmp_path / "chat.json"
    keys = "/system S" + ENTER + "hello" + ENTER + f"/save {path}" + ENTER
    run_repl(RemoteBackend(fake_server.url), keys)
    saved = json.loads(path.read_text())
    assert saved["system"] == "S" and [m["role"] for m in saved["messages"]] == [
        "user",
        "assistant",
    ]
    text, _ = run_repl(RemoteBackend(fake_server.url), f"/load {path}" + ENTER + "again" + ENTER)
    assert "loaded 2 messages" in text
    roles = [m["role"] for m in fake_server.requests[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    text, _ = run_repl(RemoteBackend(fake_server.url), f"/load {tmp_path / 'bad.json'}" + ENTER)
    assert "not a conversation file" in text


def test_help_model_rag_tools_unknown_and_exit(fake_server):
    keys = (
        "/help"
        + ENTER
        + "/model"
        + ENTER
        + "/rag no-such-docs"
        + ENTER
        + "/tools"
        + ENTER
        + "/nope"
        + ENTER
    )
    keys += "/exit" + ENTER + "never sent" + ENTER
    text, _ = run_repl(RemoteBackend(fake_server.url), keys)
    assert "/system" in text and "/save" in text
    assert "models: fake-model" in text
    assert "no-such-docs: no such file or directory" in text
    assert "tools off (/tools DIR turns them on)" in text
    assert "unknown command /nope" in text
    assert fake_server.requests == []  # /exit left before the last line


def test_unreachable_server_is_one_line_and_the_repl_stays_up(fake_server):
    dead = RemoteBackend("http://127.0.0.1:9")
    text, repl = run_repl(dead, "hello" + ENTER + "/set seed 1" + ENTER)
    errors = [line for line in text.splitlines() if "error:" in line]
    assert errors == [
        "error: cannot reach http://127.0.0.1:9/v1: connection refused (is the server running?)"
    ]
    assert "seed = 1" in text  # the next command still ran
    assert repl.conversation.messages == []  # the unanswered question is not kept


def test_server_error_message_is_shown(fake_server):
    conversation = Conversation(settings={"temperature": 1.9})
    text, _ = run_repl(RemoteBackend(fake_server.url), "hi" + ENTER, conversation=conversation)
    assert "server answered 400: temperature too hot" in text


def test_history_file_is_written(fake_server, tmp_path):
    history = tmp_path / "history"
    run_repl(RemoteBackend(fake_server.url), "remember me" + ENTER, history_path=history)
    assert "remember me" in history.read_text()


def test_conversation_file_round_trip_and_errors(tmp_path):
    c = Conversation(system="s", messages=[{"role": "user", "content": "x"}])
    c.set("max_tokens", "12")
    c.save(tmp_path / "c.json")
    back = Conversation.load(tmp_path / "c.json")
    assert back == c
    (tmp_path / "bad.json").write_text(
        json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    )
    for path, message in [
        (tmp_path / "none.json", "no such file"),
        (tmp_path / "bad.json", "message 0 needs a role"),
    ]:
        try:
            Conversation.load(path)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError("expected an error")
