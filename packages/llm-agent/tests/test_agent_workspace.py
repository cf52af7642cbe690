"""Workspace confinement: reading, writing and listing inside work; every way out is refused
with a clear ToolError, and the test checks that nothing outside changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from llm_agent import ToolError, Workspace


def test_read_write_list_inside(ws_root, outside):
    ws = Workspace(ws_root)
    assert ws.read_file("hello.txt") == "hello world\n"
    assert ws.read_file(str(ws_root / "sub" / "inner.txt")) == "inner\n"  # absolute, inside
    assert ws.write_file("new/deeper/notes.txt", "héllo") == len("héllo".encode())
    assert (ws_root / "new" / "deeper" / "notes.txt").read_text() == "héllo"
    (ws_root / "hello.txt").chmod(0o750)
    ws.write_file("hello.txt", "replaced")
    assert (ws_root / "hello.txt").read_text() == "replaced"
    assert (ws_root / "hello.txt").stat().st_mode & 0o777 == 0o750  # the mode is kept
    names = [(e.name, e.kind) for e in ws.list_dir(".")]
    assert names == [("hello.txt", "file"), ("new", "dir"), ("sub", "dir")]
    assert [e.name for e in ws.list_dir("sub")] == ["inner.txt"]
    assert not [p for p in ws_root.rglob("*.tmp")], "a temporary file was left behind"
    outside.check()


@pytest.mark.parametrize(
    "path", ["../outside/secret.txt", "sub/../../outside/secret.txt", "..", "/etc/passwd"]
)
def test_paths_outside_are_refused(ws_root, outside, path):
    ws = Workspace(ws_root)
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.read_file(path)
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.write_file(path, "pwned")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.list_dir(path)
    outside.check()


def test_absolute_path_to_the_neighbour_is_refused(ws_root, outside):
    ws = Workspace(ws_root)
    target = outside.root / "secret.txt"
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.write_file(str(target), "pwned")
    with pytest.raises(ToolError, match="outside the workspace"):
        ws.write_file(str(outside.root / "new.txt"), "pwned")
    outside.check()


def test_symlinks_that_lead_outside_are_refused(ws_root, outside):
    (ws_root / "etc").symlink_to("/etc")
    (ws_root / "secret").symlink_to(outside.root / "secret.txt")
    (ws_root / "away").symlink_to(outside.root)
    ws = Workspace(ws_root)
    for call in (
        lambda: ws.read_file("etc/passwd"),
        lambda: ws.write_file("etc/agent.txt", "pwned"),
        lambda: ws.list_dir("etc"),
        lambda: ws.read_file("secret"),
        lambda: ws.write_file("secret", "pwned"),
        lambda: ws.write_file("away/new.txt", "pwned"),
    ):
        with pytest.raises(ToolError, match="symlink that leads outside the workspace"):
            call()
    assert not Path("/etc/agent.txt").exists()
    assert [e.kind for e in ws.list_dir(".") if e.name in ("etc", "secret")] == ["symlink"] * 2
    outside.check()


def test_a_write_replaces_an_inside_symlink_instead_of_following_it(ws_root, outside):
    (ws_root / "link.txt").symlink_to(ws_root / "hello.txt")
    Workspace(ws_root).write_file("link.txt", "new")
    assert not (ws_root / "link.txt").is_symlink()
    assert (ws_root / "link.txt").read_text() == "new"
    assert (ws_root / "hello.txt").read_text() == "hello world\n"
    outside.check()


def _swap_after_check(monkeypatch, ws: Workspace, swap) -> None:
    """Run ``swap()`` right after the path checks pass, before the file is opened."""
    check = ws.resolve

    def checked_then_swapped(path):
        real = check(path)
        swap()
        return real

    monkeypatch.setattr(ws, "resolve", checked_then_swapped)


def test_a_folder_swapped_for_a_symlink_after_the_check(ws_root, outside, monkeypatch):
    ws = Workspace(ws_root)

    def swap() -> None:
        if (ws_root / "sub").is_dir() and not (ws_root / "sub").is_symlink():
            (ws_root / "sub" / "inner.txt").unlink()
            (ws_root / "sub").rmdir()
            (ws_root / "sub").symlink_to(outside.root)

    _swap_after_check(monkeypatch, ws, swap)
    with pytest.raises(ToolError, match="symlink"):
        ws.write_file("sub/secret.txt", "pwned")
    (ws_root / "sub").unlink()
    (ws_root / "sub").mkdir()
    (ws_root / "sub" / "inner.txt").write_text("inner\n")
    with pytest.raises(ToolError, match="symlink"):
        ws.read_file("sub/inner.txt")
    outside.check()


def test_a_file_swapped_for_a_symlink_after_the_check(ws_root, outside, monkeypatch):
    ws = Workspace(ws_root)

    def swap() -> None:
        if not (ws_root / "hello.txt").is_symlink():
            (ws_root / "hello.txt").unlink()
            (ws_root / "hello.txt").symlink_to(outside.root / "secret.txt")

    _swap_after_check(monkeypatch, ws, swap)
    with pytest.raises(ToolError, match="symlink"):
        ws.read_file("hello.txt")
    (ws_root / "hello.txt").unlink()
    (ws_root / "hello.txt").write_text("hello world\n")
    ws.write_file("hello.txt", "written")  # replaces the link, never writes through it
    assert not (ws_root / "hello.txt").is_symlink()
    assert (ws_root / "hello.txt").read_text() == "written"
    outside.check()


def test_a_1gb_file_is_refused_without_reading_it(ws_root, outside):
    with open(ws_root / "big.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB long, nothing on disk
    with pytest.raises(ToolError, match=r"big.bin: 1.0 GiB, over the read limit of 256.0 KiB"):
        Workspace(ws_root).read_file("big.bin")
    outside.check()


def test_oversized_content_is_not_written(ws_root, outside):
    ws = Workspace(ws_root, write_limit=1024)
    with pytest.raises(ToolError, match="over the write limit"):
        ws.write_file("big.txt", "x" * 2000)
    assert not (ws_root / "big.txt").exists()
    outside.check()


@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01\x00\x00", b"\xff\xfe\xfa text"])
def test_binary_content_is_refused(ws_root, outside, data):
    (ws_root / "blob").write_bytes(data)
    with pytest.raises(ToolError, match="text only"):
        Workspace(ws_root).read_file("blob")
    outside.check()


def test_special_files_and_folders(ws_root, outside):
    os.mkfifo(ws_root / "pipe")
    ws = Workspace(ws_root)
    with pytest.raises(ToolError, match="not a regular file"):
        ws.read_file("pipe")  # would block forever if opened for a blocking read
    with pytest.raises(ToolError, match="is a directory, not a file"):
        ws.read_file("sub")
    with pytest.raises(ToolError, match="is a directory"):
        ws.write_file("sub", "x")
    with pytest.raises(ToolError, match="No such file"):
        ws.read_file("missing.txt")
    with pytest.raises(ToolError, match="not a folder|Not a directory"):
        ws.list_dir("hello.txt")
    with pytest.raises(ToolError, match="not a file name"):
        ws.write_file(".", "x")
    with pytest.raises(ToolError, match="workspace folder, not a file"):
        ws.read_file(".")
    assert not [p for p in ws_root.rglob("*.tmp")]
    outside.check()


def test_workspace_root_must_exist(tmp_path):
    with pytest.raises(ToolError, match="not a directory"):
        Workspace(tmp_path / "nope")
