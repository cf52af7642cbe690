"""run_command: refused unless allowed or approved; in bubblewrap, writes outside the
workspace, reading the home folder and the network all fail, runaway commands are stopped,
and the test checks that nothing outside changed."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from llm_agent import ToolError, Workspace, sandbox

needs_bwrap = pytest.mark.skipif(
    sandbox.bubblewrap() is None,
    reason="bubblewrap (bwrap) is missing or cannot make a sandbox here: "
    "`apt-get install bubblewrap` (CI installs it)",
)


# without a sandbox, commands are refused for that reason first
OFF = (
    "commands are off: pass --allow-commands" if sandbox.bubblewrap() else "no sandbox is available"
)


def test_commands_are_off_by_default(ws_root, outside):
    with pytest.raises(ToolError, match=OFF):
        Workspace(ws_root).run_command("touch made.txt")
    assert not (ws_root / "made.txt").exists()
    outside.check()


def test_the_user_says_no(ws_root, outside):
    asked = []
    ws = Workspace(ws_root, approve=lambda c: asked.append(c) or False)
    refused = "did not approve the command: touch made.txt"
    with pytest.raises(ToolError, match=refused if sandbox.bubblewrap() else OFF):
        ws.run_command("touch made.txt")
    assert asked == (["touch made.txt"] if sandbox.bubblewrap() else [])
    assert not (ws_root / "made.txt").exists()
    outside.check()


def test_no_sandbox_means_no_commands_unless_unconfined_and_approved(ws_root, outside, monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    with pytest.raises(ToolError, match="no sandbox is available"):
        Workspace(ws_root, allow_commands=True).run_command("touch made.txt")
    unconfined = Workspace(ws_root, allow_commands=True, unconfined_commands=True)
    with pytest.raises(ToolError, match="did not approve the unconfined command"):
        unconfined.run_command("touch made.txt")  # --allow-commands is not enough
    asked = []
    unconfined.approve = lambda c: asked.append(c) or True
    result = unconfined.run_command("touch made.txt && echo done")
    assert asked == ["[UNCONFINED: no sandbox] touch made.txt && echo done"]
    assert (result.exit_code, result.output, result.sandboxed) == (0, "done\n", False)
    assert (ws_root / "made.txt").exists()
    outside.check()


def test_unconfined_runaway_commands_are_stopped(ws_root, outside, monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    ws = Workspace(ws_root, unconfined_commands=True, approve=lambda c: True, command_timeout=1)
    start = time.monotonic()
    result = ws.run_command("(sleep 2; touch late.txt) & sleep 30")
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - start < 5
    time.sleep(2.5)
    assert not (ws_root / "late.txt").exists(), "a child outlived the timeout"
    outside.check()


@needs_bwrap
def test_allowed_commands_run_in_the_workspace(ws_root, outside):
    ws = Workspace(ws_root, allow_commands=True)
    result = ws.run_command("cat hello.txt; echo made > made.txt; pwd; echo $HOME; env | sort")
    assert result.exit_code == 0 and result.sandboxed and not result.timed_out
    lines = result.output.splitlines()
    assert lines[:3] == ["hello world", str(ws_root), str(ws_root)]
    assert {line.split("=")[0] for line in lines[3:]} <= {
        "PATH",
        "HOME",
        "LANG",
        "TERM",
        "TMPDIR",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    }
    assert (ws_root / "made.txt").read_text() == "made\n"
    assert ws.run_command("exit 3").exit_code == 3
    outside.check()


@needs_bwrap
def test_allowlist(ws_root, outside):
    ws = Workspace(ws_root, allow_commands=True, allowlist=["ls*", "cat *"])
    assert ws.run_command("ls").output.split() == ["hello.txt", "sub"]
    with pytest.raises(ToolError, match="commands are off"):
        ws.run_command("touch made.txt")
    ws.approve = lambda c: True
    assert ws.run_command("touch made.txt").exit_code == 0
    outside.check()


@needs_bwrap
def test_writes_outside_the_workspace_fail_in_the_sandbox(ws_root, outside, tmp_path):
    ws = Workspace(ws_root, allow_commands=True)
    result = ws.run_command(
        f"echo pwned > {outside.root}/secret.txt; echo pwned > ../escape.txt; "
        "touch /etc/agent-test; touch /usr/agent-test; echo done"
    )
    assert result.output.splitlines()[-1] == "done"
    assert "Read-only file system" in result.output
    assert not (tmp_path / "escape.txt").exists()
    assert not list(tmp_path.glob("escape*"))
    for path in ("/etc/agent-test", "/usr/agent-test"):
        assert not os.path.exists(path)
    outside.check()


@needs_bwrap
def test_the_home_folder_is_hidden(ws_root, outside, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".secret").write_text("password")
    monkeypatch.setenv("HOME", str(home))
    outside.before = outside.state()
    result = Workspace(ws_root, allow_commands=True).run_command(
        f"cat {home}/.secret; echo ---; ls -A /root; echo ---; ls -A /tmp"
    )
    secret, root, tmp = result.output.split("---\n")
    assert "No such file" in secret and "password" not in result.output
    assert root == ""  # /root is an empty in-memory folder
    assert tmp.split() == [ws_root.relative_to("/tmp").parts[0]]  # only the way to the workspace
    outside.check()


@needs_bwrap
def test_no_network_unless_allowed(ws_root, outside):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connected, done = [], threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                connected.append(server.accept()[0])
            except TimeoutError:
                continue

    listener = threading.Thread(target=accept)
    listener.start()
    probe = f"(echo hi > /dev/tcp/127.0.0.1/{port}) && echo connected || echo refused"
    result = Workspace(ws_root, allow_commands=True).run_command(f"bash -c '{probe}'")
    time.sleep(0.3)  # a connection made just before the command ended is accepted by now
    done.set()
    listener.join()
    server.close()
    assert result.output.splitlines()[-1] == "refused"
    assert not connected, "a sandboxed command reached a listening socket"
    outside.check()


@needs_bwrap
def test_a_command_that_never_ends_is_killed(ws_root, outside):
    ws = Workspace(ws_root, allow_commands=True, command_timeout=1)
    start = time.monotonic()
    result = ws.run_command("echo started; while :; do :; done")
    assert result.timed_out and result.exit_code is None and result.output == "started\n"
    assert time.monotonic() - start < 5
    outside.check()


@needs_bwrap
def test_a_command_that_prints_100mb_is_capped(ws_root, outside):
    ws = Workspace(ws_root, allow_commands=True, command_timeout=30)
    result = ws.run_command("head -c 100000000 /dev/zero | tr '\\0' x")
    assert result.exit_code == 0 and result.truncated
    assert result.output_bytes == 100_000_000
    assert result.output == "x" * ws.output_limit
    outside.check()


@needs_bwrap
def test_children_die_with_the_command(ws_root, outside):
    ws = Workspace(ws_root, allow_commands=True, command_timeout=1)
    result = ws.run_command(
        "(sleep 2; touch late.txt) & (setsid sh -c 'sleep 2; touch late2.txt' &) ; echo bye"
    )
    assert result.exit_code == 0 and result.output == "bye\n"
    timed = ws.run_command("(sleep 2; touch late3.txt) & sleep 30")
    assert timed.timed_out
    time.sleep(2.5)
    assert sorted(p.name for p in ws_root.iterdir()) == ["hello.txt", "sub"]
    outside.check()
