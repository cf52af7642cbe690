"""The real console script on a pseudo-terminal (pexpect): Ctrl-C, Ctrl-D, history; and pipes."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest

PROMPT = ">"  # prompt-toolkit draws the space after it separately


def spawn(*args: str, history) -> pexpect.spawn:
    env = {
        **os.environ,
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "TERM": "xterm",
        "COLUMNS": "100",
        "LINES": "40",
    }
    child = pexpect.spawn(
        sys.executable, ["-m", "llm_repl.cli", *args, "--history", str(history)],
        env=env, encoding="utf-8", timeout=20, dimensions=(40, 100),
    )  # fmt: skip
    child.expect("chatting with")
    child.expect_exact(PROMPT)
    return child


def test_answer_ctrl_c_next_prompt_and_ctrl_d(fake_server, tmp_path):
    child = spawn("--server", fake_server.url, history=tmp_path / "h")
    child.sendline("hello")
    child.expect("You said")
    child.expect("tokens/s, first token")
    child.expect_exact(PROMPT)

    fake_server.delay, fake_server.chunks = 0.05, 400  # a 20-second answer
    child.sendline("tell me everything")
    child.expect("more")
    child.sendcontrol("c")
    child.expect("generation stopped", timeout=5)  # well before the answer would end
    child.expect_exact(PROMPT)

    fake_server.delay, fake_server.chunks = 0.0, 0
    child.sendline("still there?")
    child.expect("You said")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert [r["messages"][-1]["content"] for r in fake_server.requests] == [
        "hello",
        "tell me everything",
        "still there?",
    ]
    # the stopped answer stays in the conversation, as far as it got
    assert fake_server.requests[-1]["messages"][3]["role"] == "assistant"


def test_history_persists_between_runs(fake_server, tmp_path):
    history = tmp_path / "history"
    child = spawn("--server", fake_server.url, history=history)
    child.sendline("the first question")
    child.expect("tokens/s")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)

    child = spawn("--server", fake_server.url, history=history)
    for _attempt in range(10):  # prompt-toolkit loads the history in a background thread
        child.send("\x1b[A")  # Up: the previous run's line comes back
        if child.expect(["the first question", pexpect.TIMEOUT], timeout=2) == 0:
            break
    else:
        raise AssertionError("Up did not recall the previous run's line")
    child.send("\r")
    child.expect("tokens/s")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert [r["messages"][-1]["content"] for r in fake_server.requests] == [
        "the first question"
    ] * 2


def test_ctrl_c_at_the_prompt_does_not_exit(fake_server, tmp_path):
    child = spawn("--server", fake_server.url, history=tmp_path / "h")
    child.send("half typed")
    child.sendcontrol("c")
    child.sendline("/model")
    child.expect("models: fake-model")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def _once(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_repl.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,  # a /set checks its value with llm-infer, which imports torch
    )


def test_piped_input_prints_the_plain_answer(fake_server):
    result = _once("--server", fake_server.url, "--once", "--system", "S", stdin="what is 2+2?\n")
    assert result.returncode == 0
    assert result.stdout.startswith("You said **what is 2+2?**.")  # plain text, no rendering
    assert fake_server.requests[0]["messages"][0] == {"role": "system", "content": "S"}
    assert fake_server.requests[0]["temperature"] == 0.0  # a piped answer is greedy
    # plain llm-repl with a pipe on stdin does the same
    assert _once("--server", fake_server.url, stdin="again\n").stdout.startswith(
        "You said **again**"
    )


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["--server", "http://127.0.0.1:9"], "hi", "cannot reach http://127.0.0.1:9/v1"),
        (["--server", "http://127.0.0.1:9"], "", "no question on standard input"),
        (
            ["--server", "http://127.0.0.1:9", "--temperature", "9"],
            "hi",
            "temperature must be a number in [0, 2]",
        ),
    ],
)
def test_pipe_errors_are_one_line(args, stdin, message):
    result = _once(*args, stdin=stdin)
    assert result.returncode == 1
    assert (
        result.stderr.count("\n") == 1
        and message in result.stderr
        and "Traceback" not in result.stderr
    )


def test_local_backend_without_llm_infer_names_the_extra(monkeypatch):
    from llm_repl import BackendError, LocalBackend

    monkeypatch.setitem(sys.modules, "llm_infer", None)
    with pytest.raises(BackendError, match=r"pip install 'llm-repl\[local\]'"):
        LocalBackend("demo")
