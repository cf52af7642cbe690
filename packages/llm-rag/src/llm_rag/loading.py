"""Finding and reading documents: paths, folders and globs in; UTF-8 text streamed out.

Binary files (a NUL byte in the first 8,000 bytes, git's test), files that are not valid UTF-8,
and empty files are skipped and counted, never silently dropped. Text is read in blocks, so a
file of any size is streamed and never held whole.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_rag.errors import RagError

BINARY_PROBE = 8000  # bytes looked at for a NUL, as git does
BLOCK_BYTES = 1 << 20  # bytes read at a time
SKIP_REASONS = ("empty", "binary", "undecodable", "unreadable")


@dataclass
class LoadReport:
    """What a load found: text files read, bytes, chunks made, and files skipped by reason."""

    files: int = 0
    bytes: int = 0
    chunks: int = 0
    skipped: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in SKIP_REASONS})

    def summary(self) -> str:
        """One line: ``3 files, 12.1 kB, 40 chunks; skipped 1 binary, 2 empty``."""
        line = (
            f"{self.files} file{'s' * (self.files != 1)}, {_size(self.bytes)}, {self.chunks} chunks"
        )
        skipped = [f"{len(v)} {k}" for k, v in self.skipped.items() if v]
        return line + (f"; skipped {', '.join(skipped)}" if skipped else "")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def find_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths``: files as given, folders walked (hidden entries left out), globs
    expanded (``**`` recursive). Sorted and without repeats.

    Raises :class:`RagError` for a path that does not exist or a glob that matches nothing.
    """
    if not paths:
        raise RagError("no paths given")
    found: dict[Path, None] = {}
    for raw in paths:
        text = str(raw)
        if any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise RagError(f"{text}: the pattern matches no files")
            candidates = [Path(m) for m in matches]
        else:
            path = Path(text)
            if not path.exists():
                raise RagError(f"{path}: no such file or directory")
            candidates = [path]
        for path in candidates:
            if path.is_dir():
                for sub in sorted(path.rglob("*")):
                    hidden = any(part.startswith(".") for part in sub.relative_to(path).parts)
                    if sub.is_file() and not hidden:
                        found[sub] = None
            elif path.is_file():
                found[path] = None
    return sorted(found)


def classify(path: Path) -> str | None:
    """Why ``path`` cannot be indexed (``"empty"``, ``"binary"``, ``"undecodable"``,
    ``"unreadable"``), or None for a UTF-8 text file. Reads the file once, in blocks."""
    try:
        with open(path, "rb") as f:
            head = f.read(BINARY_PROBE)
            if not head.strip():
                rest = f.read(BLOCK_BYTES)
                if not rest and not head:
                    return "empty"
                head += rest
            if b"\0" in head[:BINARY_PROBE]:
                return "binary"
            decoder = codecs.getincrementaldecoder("utf-8")()
            block = head
            while block:
                decoder.decode(block)
                block = f.read(BLOCK_BYTES)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "undecodable"
    except OSError:
        return "unreadable"
    return None


def read_blocks(path: Path, block_chars: int = BLOCK_BYTES) -> Iterator[str]:
    """The text of a UTF-8 file in blocks of ``block_chars`` characters, line ends kept as they are.

    A leading byte-order mark is dropped (offsets count characters after it).
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        while block := f.read(block_chars):
            yield block
