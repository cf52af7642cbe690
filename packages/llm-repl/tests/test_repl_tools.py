"""``/tools DIR``: the chat goes through llm-agent on DIR, confined, commands asked for."""

from __future__ import annotations

import asyncio
import io
import json

import llm_repl.tools
from llm_agent import sandbox
from llm_repl import Repl
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

ENTER = "\r"


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class ScriptedBackend:
    """A text backend that replies from a script and records what it was sent."""

    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.seen: list[list[dict]] = []

    async def list_models(self) -> list[str]:
        return ["scripted"]

    async def stream(self, messages, **sampling):
        self.seen.append(list(messages))
        reply = self.replies[len(self.seen) - 1]
        for i in range(0, len(reply), 5):
            await asyncio.sleep(0)
            yield reply[i : i + 5]


def run_repl(backend, keys: str) -> tuple[str, Repl]:
    console = Console(file=io.StringIO(), force_terminal=True, width=200, record=True)

    async def go() -> Repl:
        with create_pipe_input() as pipe:
            pipe.send_text(keys)
            pipe.close()
            repl = Repl(backend, console=console)
            repl.session = PromptSession(input=pipe, output=DummyOutput(), multiline=True,
                                         key_bindings=repl.session.key_bindings)  # fmt: skip
            assert await repl.run() == 0
            return repl

    repl = asyncio.run(go())
    return console.export_text(), repl


def test_tools_on_a_folder_write_a_file_and_stay_inside(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    backend = ScriptedBackend(
        call("write_file", path="notes.txt", content="hello")
        + call("write_file", path="../escape.txt", content="x"),
        "Wrote notes.txt.",
    )
    keys = (
        f"/tools {root}"
        + ENTER
        + "create notes.txt containing hello"
        + ENTER
        + "/tools off"
        + ENTER
    )
    text, repl = run_repl(backend, keys)
    assert (root / "notes.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]
    commands = "each asked for at the prompt" if sandbox.bubblewrap() else "refused (no sandbox"
    assert f"tools on in {root}" in text and f"commands: {commands}" in text
    assert "→ write_file(path='notes.txt', content='hello')" in text
    assert "← write_file: wrote 5 bytes to notes.txt" in text
    assert "outside the workspace" in text
    assert "Wrote notes.txt." in text and "tools off" in text
    assert "<tools>" in backend.seen[0][0]["content"]  # the tools are described to the model
    assert repl.conversation.messages == [
        {"role": "user", "content": "create notes.txt containing hello"},
        {"role": "assistant", "content": "Wrote notes.txt."},
    ]
    assert repl.tools is None


def test_commands_are_asked_for_and_refused(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(llm_repl.tools, "confirm", lambda console, c: asked.append(c) or False)
    backend = ScriptedBackend(call("run_command", command="touch made.txt"), "It was refused.")
    text, _ = run_repl(backend, f"/tools {tmp_path}" + ENTER + "touch a file" + ENTER)
    if sandbox.bubblewrap() is not None:
        assert asked == ["touch made.txt"]
        assert "the user did not approve the command: touch made.txt" in text
    else:
        assert "no sandbox is available" in text
    assert not (tmp_path / "made.txt").exists()


def test_tools_on_a_missing_folder(tmp_path):
    text, repl = run_repl(
        ScriptedBackend(), f"/tools {tmp_path / 'nope'}" + ENTER + "/tools" + ENTER
    )
    assert "not a directory" in text and "tools off (/tools DIR turns them on)" in text
    assert repl.tools is None
