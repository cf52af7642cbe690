"""Atomic directory writes and the format header every saved llm-rag directory carries."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_rag.errors import IndexFormatError, RagError

FORMAT_VERSION = 1  # bump on any change a reader of the previous version cannot read


@contextlib.contextmanager
def atomic_directory(target: str | Path, name: str) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``.

    Files written into it are fsynced, then it is renamed into place (an existing ``target``
    is moved aside first and removed after), so a reader sees the old directory or the new
    one, never half of either. On an exception the temporary directory is removed and
    ``target`` is left as it was. ``name`` is the header the directory holds
    (:func:`write_header`): an existing ``target`` is replaced only when it is empty or holds
    that header, so a folder of someone's files is never overwritten; otherwise
    :class:`RagError` is raised before anything is written.
    """
    target = Path(target)
    if target.exists() and not (
        (target.is_dir() and not any(target.iterdir())) or (target / f"{name}.json").is_file()
    ):
        raise RagError(f"{target}: exists and is not an llm-rag {name}; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_header(directory: Path, name: str, **fields: Any) -> None:
    """Write ``directory/<name>.json`` with ``format``, ``format_version`` and ``fields``."""
    header = {"format": f"llm-rag/{name}", "format_version": FORMAT_VERSION, **fields}
    (directory / f"{name}.json").write_text(json.dumps(header, indent=1) + "\n")


def read_header(directory: str | Path, kind: str) -> dict[str, Any]:
    """Read and check the header :func:`write_header` wrote.

    Raises :class:`IndexFormatError` when the directory or header is missing, unreadable, of
    another kind, or of a format version this code does not read.
    """
    directory = Path(directory)
    path = directory / f"{kind}.json"
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: no such directory")
    if not path.is_file():
        raise IndexFormatError(f"{directory}: not an llm-rag {kind} (no {path.name})")
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != f"llm-rag/{kind}":
        raise IndexFormatError(f"{path}: not an llm-rag {kind} header")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version!r}, this llm-rag reads version {FORMAT_VERSION}"
        )
    return header
