"""Fixtures: a workspace folder with a folder beside it that no tool may change.

``outside.check()`` compares every file and folder under the neighbour (names, kinds,
contents, modes) and the workspace's parent with the snapshot taken before the test.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode and a hash of the content (or link target)."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if path.is_symlink():
                seen[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[str(path)] = ("dir", info.st_mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                seen[str(path)] = ("file", info.st_mode, info.st_size, digest)
    return seen


class Outside:
    """The places a confined tool must not change: a neighbour folder, the workspace's
    parent, and ``/etc/passwd``."""

    def __init__(self, root: Path, workspace: Path) -> None:
        self.root = root
        self.workspace = workspace
        self.before = self.state()

    def state(self) -> tuple:
        parent = sorted(p.name for p in self.workspace.parent.iterdir())
        passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
        return snapshot(self.root), parent, passwd

    def check(self) -> None:
        assert self.state() == self.before, "something outside the workspace changed"


@pytest.fixture
def ws_root(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hello.txt").write_text("hello world\n")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_text("inner\n")
    return root


@pytest.fixture
def outside(tmp_path, ws_root) -> Outside:
    root = tmp_path / "outside"
    root.mkdir()
    (root / "secret.txt").write_text("top secret\n")
    return Outside(root, ws_root)
