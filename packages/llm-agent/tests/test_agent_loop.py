"""The agent loop with a scripted ChatModel: calls intercepted while the reply streams, run
concurrently, malformed calls answered with errors, results fed back, a JSONL transcript,
and (through the tools) nothing outside the workspace changed."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from llm_agent import Agent, Event, Workspace, sandbox


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def chop(text: str, size: int = 3) -> list[str]:
    """``text`` as small deltas, so tags arrive split across them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class ScriptedModel:
    """Replies from a script, one list of deltas per turn; records what it was sent."""

    def __init__(self, *replies: str | list[str], native_tools: bool = False) -> None:
        self.replies = [chop(r) if isinstance(r, str) else r for r in replies]
        self.native_tools = native_tools
        self.seen: list[list[dict]] = []
        self.sampling: list[dict] = []

    async def stream(self, messages, **sampling):
        self.seen.append(json.loads(json.dumps(messages)))
        self.sampling.append(sampling)
        for delta in self.replies[len(self.seen) - 1]:
            if callable(delta):
                await delta()
                continue
            await asyncio.sleep(0)
            yield delta


def run(agent: Agent, task: str = "do it"):
    return asyncio.run(agent.run(task))


def test_read_write_list_through_the_loop(ws_root, outside):
    model = ScriptedModel(
        "Let me look." + call("list_dir", path=".") + call("read_file", path="hello.txt"),
        call("write_file", path="out/notes.txt", content="hello"),
        "Done: notes.txt holds hello.",
    )
    events: list[Event] = []
    log = outside.root / "transcript.jsonl"
    agent = Agent(model, Workspace(ws_root), transcript=log, on_event=events.append)
    result = run(agent, "create out/notes.txt containing hello")
    agent.close()
    assert (result.answer, result.steps, result.stop_reason) == (
        "Done: notes.txt holds hello.",
        3,
        "answer",
    )
    assert (ws_root / "out" / "notes.txt").read_text() == "hello"
    assert [r.content for r in result.calls] == [
        "hello.txt (12 bytes)\nsub/",
        "hello world\n",
        "wrote 5 bytes to out/notes.txt",
    ]
    # the text model sees the tools in its system prompt and the results as <tool_result>
    system, user, reply, results = model.seen[1]
    assert '"name": "write_file"' in system["content"] and "<tools>" in system["content"]
    assert user == {"role": "user", "content": "create out/notes.txt containing hello"}
    assert reply["role"] == "assistant" and reply["content"].startswith("Let me look.<tool_call>")
    assert results["role"] == "user"
    assert results["content"] == (
        '<tool_result name="list_dir">\nhello.txt (12 bytes)\nsub/\n</tool_result>\n'
        '<tool_result name="read_file">\nhello world\n\n</tool_result>'
    )
    assert (
        "".join(e.data["text"] for e in events if e.kind == "text" and e.step == 1)
        == "Let me look."
    )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["step"], x["event"]) for x in lines] == [
        (0, "task"),
        (1, "call"),
        (1, "call"),
        (1, "reply"),
        (1, "result"),
        (1, "result"),
        (2, "call"),
        (2, "reply"),
        (2, "result"),
        (3, "reply"),
        (3, "answer"),
        (3, "stop"),
    ]
    assert lines[2]["name"] == "read_file" and lines[2]["arguments"] == {"path": "hello.txt"}
    assert lines[-3]["text"] == "Done: notes.txt holds hello."
    log.unlink()  # the transcript is the test's own file; nothing else outside may change
    outside.check()


def test_escapes_through_the_loop_get_error_results(ws_root, outside):
    (ws_root / "etc").symlink_to("/etc")
    model = ScriptedModel(
        call("read_file", path="../outside/secret.txt")
        + call("write_file", path=str(outside.root / "secret.txt"), content="pwned")
        + call("write_file", path="etc/agent.txt", content="pwned")
        + call("run_command", command=f"echo pwned > {outside.root}/secret.txt"),
        "I could not.",
    )
    result = run(Agent(model, Workspace(ws_root)))
    assert [r.is_error for r in result.calls] == [True] * 4
    contents = [r.content for r in result.calls]
    assert "outside the workspace" in contents[0] and "outside the workspace" in contents[1]
    assert "symlink that leads outside" in contents[2]
    off = "commands are off" if sandbox.bubblewrap() else "no sandbox is available"
    assert off in contents[3]
    assert result.answer == "I could not."
    outside.check()


def test_malformed_calls_get_error_results_not_a_crash(ws_root, outside):
    model = ScriptedModel(
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>'
        + call("read_file")
        + call("read_file", path=3)
        + call("write_file", path="a.txt", content="x", mode="w")
        + '<tool_call>{"name": "read_file", "arguments": "[1"}</tool_call>'
        + '<tool_call>{"name": "read_file", "arguments": {"path": "hel',
        "Sorry.",
    )
    result = run(Agent(model, Workspace(ws_root)))
    errors = [r.content for r in result.calls]
    assert all(r.is_error for r in result.calls) and len(errors) == 8
    assert errors[0].startswith("error: malformed tool call (not JSON")
    assert errors[1].startswith('error: malformed tool call (want {"name"')
    assert errors[2] == (
        "error: no tool named 'delete_everything' (the tools: read_file, write_file, list_dir)"
    )
    assert errors[3] == "error: read_file: missing argument 'path'"
    assert errors[4] == "error: read_file: argument 'path' must be a string, got 3"
    assert errors[5] == "error: write_file: unknown argument 'mode' (it takes path, content)"
    assert errors[6].startswith("error: malformed call of read_file: its arguments are not JSON")
    assert errors[7].startswith("error: malformed tool call (no </tool_call>)")
    assert result.answer == "Sorry." and not (ws_root / "a.txt").exists()
    outside.check()


def test_a_list_of_calls_in_one_block(ws_root, outside):
    listed = [
        {"name": "write_file", "arguments": {"path": "notes.txt", "content": "hello"}},
        {"name": "read_file", "arguments": {"path": "hello.txt"}},
        "not a call",
    ]
    model = ScriptedModel(f"<tool_call>[{json.dumps(listed)[1:-1]}]</tool_call>", "ok")
    result = run(Agent(model, Workspace(ws_root)))
    assert [r.content for r in result.calls] == [
        "wrote 5 bytes to notes.txt",
        "hello world\n",
        'error: malformed tool call (want {"name": ..., "arguments": {...}}): "not a call"',
    ]
    assert (ws_root / "notes.txt").read_text() == "hello"
    outside.check()


def test_calls_run_while_the_reply_streams(ws_root):
    started = threading.Event()

    class Watched(Workspace):
        def list_dir(self, path="."):
            started.set()
            return super().list_dir(path)

    async def wait_for_the_tool():
        assert await asyncio.to_thread(started.wait, 5), "the call did not start mid-stream"

    model = ScriptedModel([call("list_dir"), wait_for_the_tool, "still writing"], "ok")
    result = run(Agent(model, Watched(ws_root)))
    assert result.answer == "ok" and not result.calls[0].is_error


def test_calls_in_one_turn_run_concurrently(ws_root):
    both = threading.Barrier(2, timeout=5)

    class Meeting(Workspace):
        def read_file(self, path):
            both.wait()  # breaks (an error) unless the other call runs at the same time
            return super().read_file(path)

    model = ScriptedModel(
        call("read_file", path="hello.txt") + call("read_file", path="sub/inner.txt"), "ok"
    )
    result = run(Agent(model, Meeting(ws_root)))
    assert [r.content for r in result.calls] == ["hello world\n", "inner\n"]


def test_max_steps_stops_a_model_that_never_answers(ws_root):
    model = ScriptedModel(*[call("list_dir")] * 5)
    events = []
    result = run(Agent(model, Workspace(ws_root), max_steps=3, on_event=events.append))
    assert (result.steps, result.stop_reason, len(model.seen)) == (3, "max_steps", 3)
    assert events[-1].kind == "stop" and events[-1].data == {"reason": "max_steps"}
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        Agent(model, Workspace(ws_root), max_steps=0)


def test_native_tool_models_get_openai_messages(ws_root):
    model = ScriptedModel(
        '<tool_call>{"id": "call_1", "name": "read_file", "arguments": "{\\"path\\": \\"hello.txt\\"}"}</tool_call>',
        "It says hello world.",
        native_tools=True,
    )
    result = run(Agent(model, Workspace(ws_root), sampling={"temperature": 0}))
    assert result.answer == "It says hello world."
    assert model.sampling[0]["temperature"] == 0
    assert [t["function"]["name"] for t in model.sampling[0]["tools"]] == [
        "read_file",
        "write_file",
        "list_dir",
    ]
    system, _, assistant, tool = model.seen[1]
    assert "<tools>" not in system["content"]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "hello.txt"}'},
            }
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "hello world\n"}


def test_run_command_is_offered_only_when_it_can_run(ws_root):
    names = lambda ws: [t["function"]["name"] for t in Agent(ScriptedModel(), ws).tools]  # noqa: E731
    assert "run_command" not in names(Workspace(ws_root))
    assert "run_command" in names(Workspace(ws_root, allow_commands=True))
    assert "run_command" in names(Workspace(ws_root, approve=lambda c: True))


def test_big_and_binary_files_and_swapped_links_through_the_loop(ws_root, outside, monkeypatch):
    with open(ws_root / "big.bin", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse
    (ws_root / "blob").write_bytes(b"\x7fELF\x02\x01\x00\x00")
    ws = Workspace(ws_root)
    check = ws.resolve

    def swapped(path):  # the folder becomes a link to the outside right after the check
        real = check(path)
        if str(path).startswith("sub") and not (ws_root / "sub").is_symlink():
            (ws_root / "sub" / "inner.txt").unlink()
            (ws_root / "sub").rmdir()
            (ws_root / "sub").symlink_to(outside.root)
        return real

    monkeypatch.setattr(ws, "resolve", swapped)
    model = ScriptedModel(
        call("read_file", path="big.bin")
        + call("read_file", path="blob")
        + call("write_file", path="sub/secret.txt", content="pwned"),
        "no",
    )
    big, blob, swap = (r.content for r in run(Agent(model, ws)).calls)
    assert big == "error: big.bin: 1.0 GiB, over the read limit of 256.0 KiB"
    assert blob == "error: blob: a binary file (read_file reads text only)"
    assert swap.startswith("error: sub") and "symlink" in swap  # caught by a check or the open
    outside.check()


@pytest.mark.skipif(
    sandbox.bubblewrap() is None,
    reason="bubblewrap (bwrap) is missing: `apt-get install bubblewrap` (CI installs it)",
)
def test_commands_through_the_loop(ws_root, outside, tmp_path):
    model = ScriptedModel(
        call("run_command", command="echo hi > made.txt; cat made.txt")
        + call("run_command", command="(sleep 1; touch late.txt) & sleep 30", timeout=0.5)
        + call("run_command", command="head -c 100000000 /dev/zero")
        + call("run_command", command=f"touch {outside.root}/x ../y ~/z /etc/z; echo $?"),
        "done",
    )
    result = run(Agent(model, Workspace(ws_root, allow_commands=True)))
    made, slow, loud, escape = (r.content for r in result.calls)
    assert made == "exit code: 0\nhi\n"
    assert slow.startswith("timed out: the command and its children were killed")
    assert loud.startswith("exit code: 0\n")
    assert loud.endswith(
        f"[output truncated: 100000000 bytes written, the first {64 * 1024} shown]"
    )
    assert "Read-only file system" in escape
    time.sleep(1.5)
    assert not (ws_root / "late.txt").exists(), "a child outlived its command"
    assert not (tmp_path / "y").exists()
    outside.check()


def test_a_long_listing_says_how_much_it_left_out(ws_root):
    from llm_agent.calls import ToolCall
    from llm_agent.tools import LIST_LIMIT, run_tool

    for i in range(LIST_LIMIT + 100):
        (ws_root / "sub" / f"f{i:04d}").touch()
    ws = Workspace(ws_root)
    assert len(ws.list_dir("sub")) == LIST_LIMIT + 101  # the Python API returns them all
    shown = run_tool(ws, ToolCall("list_dir", {"path": "sub"})).content.splitlines()
    assert len(shown) == LIST_LIMIT + 1 and shown[-1] == "… 101 more entries not shown"
