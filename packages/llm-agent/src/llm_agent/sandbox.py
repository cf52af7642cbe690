"""Running a shell command in an OS sandbox (bubblewrap) or, when allowed, unconfined.

A command is a whole program, so path checks cannot confine it. Inside bubblewrap the
workspace is the only writable place: the rest of the filesystem is bound read-only, the
user's home, ``/root``, ``/home``, ``/tmp`` and ``/run`` are empty in-memory mounts, every
namespace is unshared (network too, unless allowed), the environment is scrubbed, and the
sandbox dies with its parent. On a timeout the whole process group is killed; bubblewrap's
PID namespace takes every child down with it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MASKED = ("/tmp", "/root", "/home", "/run", "/var/tmp")  # empty in-memory mounts in the sandbox


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its exit code (None when killed on the timeout), its combined
    stdout and stderr (the first ``output_limit`` bytes, decoded), and how much it wrote."""

    exit_code: int | None
    output: str
    output_bytes: int  # everything the command wrote, kept or not
    timed_out: bool
    truncated: bool
    sandboxed: bool


@functools.cache
def bubblewrap() -> str | None:
    """Path of a working ``bwrap``, or None when it is missing or cannot make a sandbox here
    (no user namespaces, no /proc). The answer is probed once per process."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]
    try:
        done = subprocess.run(
            [*probe, "--", "/bin/true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if done.returncode == 0 else None


def scrubbed_env(root: Path) -> dict[str, str]:
    """The environment a command gets: a fixed PATH, HOME at the workspace, no secrets."""
    return {
        "PATH": SAFE_PATH,
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
    }


def bwrap_argv(bwrap: str, root: Path, command: str, *, network: bool = False) -> list[str]:
    """The bubblewrap command line that runs ``command`` with ``sh -c`` confined to ``root``."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    home = os.environ.get("HOME")
    for masked in (*MASKED, *([home] if home else [])):
        if os.path.isdir(masked) and not os.path.islink(masked):
            argv += ["--tmpfs", masked]
    argv += ["--bind", str(root), str(root), "--chdir", str(root)]  # after the masks: on top
    argv += ["--unshare-all", *(["--share-net"] if network else [])]
    argv += ["--new-session", "--die-with-parent", "--clearenv"]
    for key, value in scrubbed_env(root).items():
        argv += ["--setenv", key, value]
    return [*argv, "--", "/bin/sh", "-c", command]


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    output_limit: int,
    sandboxed: bool,
) -> CommandResult:
    """Run ``argv`` in a new process group with stdin closed, collecting stdout and stderr.

    Output past ``output_limit`` bytes is read and dropped (the command is not blocked); on
    ``timeout`` seconds, or when the command exits, the whole process group is killed.
    Raises ``OSError`` when the program cannot be started.
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    kept, total, timed_out = bytearray(), 0, False
    deadline = time.monotonic() + timeout
    exited_at: float | None = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            timed_out = proc.poll() is None
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
            _kill_group(proc.pid)  # children left behind in its group go with it
        if exited_at is not None and now - exited_at > 1.0:
            break  # a child outside the group still holds the pipe: stop listening to it
        ready, _, _ = select.select([fd], [], [], min(0.1, deadline - now))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        total += len(chunk)
        if len(kept) < output_limit:
            kept += chunk[: output_limit - len(kept)]
    _kill_group(proc.pid)
    proc.stdout.close()
    code = proc.wait()
    return CommandResult(
        exit_code=None if timed_out else code,
        output=kept.decode("utf-8", "replace"),
        output_bytes=total,
        timed_out=timed_out,
        truncated=total > len(kept),
        sandboxed=sandboxed,
    )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
