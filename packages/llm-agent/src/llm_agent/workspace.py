"""The workspace: a folder the agent's tools cannot leave.

Every path is resolved inside the root; ``..``, absolute paths elsewhere and symlinks that
point outside are refused. Files are then opened one component at a time from the root with
``O_NOFOLLOW``, so a symlink swapped in after the check is refused rather than followed, and
writes never follow a symlink at all (they replace the file atomically: temporary file,
fsync, rename). Commands run in :mod:`llm_agent.sandbox`.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_agent import sandbox
from llm_agent.errors import ToolError
from llm_agent.sandbox import CommandResult

Approver = Callable[[str], bool]  # shown a command, says whether it may run

READ_LIMIT = 256 * 1024  # bytes read_file returns at most
WRITE_LIMIT = 10 * 1024 * 1024  # bytes write_file takes at most
OUTPUT_LIMIT = 64 * 1024  # bytes of a command's output kept
COMMAND_TIMEOUT = 60.0  # seconds

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class DirEntry:
    """One entry of :meth:`Workspace.list_dir`: ``kind`` is file, dir, symlink or other."""

    name: str
    kind: str
    size: int  # bytes; 0 for anything but a file


class Workspace:
    """Tools confined to the folder ``root``: ``read_file``, ``write_file``, ``list_dir`` and
    ``run_command``. Every refusal raises :class:`ToolError` with a one-line reason.

    Commands are off unless ``allow_commands`` is set or ``approve(command)`` says yes; with
    ``allowlist`` (``fnmatch`` patterns), ``allow_commands`` runs only matching commands
    without asking. They run in bubblewrap; where it is missing they are refused unless
    ``unconfined_commands`` is set, and then each one needs ``approve``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        allow_commands: bool = False,
        *,
        approve: Approver | None = None,
        allowlist: Sequence[str] | None = None,
        allow_network: bool = False,
        unconfined_commands: bool = False,
        command_timeout: float = COMMAND_TIMEOUT,
        output_limit: int = OUTPUT_LIMIT,
        read_limit: int = READ_LIMIT,
        write_limit: int = WRITE_LIMIT,
    ) -> None:
        path = Path(root)
        if not path.is_dir():
            raise ToolError(f"workspace {path}: not a directory")
        self.root = path.resolve()
        self.allow_commands = allow_commands
        self.approve = approve
        self.allowlist = list(allowlist) if allowlist is not None else None
        self.allow_network = allow_network
        self.unconfined_commands = unconfined_commands
        self.command_timeout = command_timeout
        self.output_limit = output_limit
        self.read_limit = read_limit
        self.write_limit = write_limit
        self._asking = threading.Lock()  # one approval prompt at a time

    # -- paths -----------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """``path`` (relative to the root, or absolute) as a real path inside the root.

        Raises :class:`ToolError` when it, or a symlink on the way, leads outside.
        """
        text = os.fspath(path)
        if not text or "\0" in text:
            raise ToolError(f"invalid path {text!r}")
        given = Path(text)
        real = Path(os.path.realpath(given if given.is_absolute() else self.root / given))
        if real != self.root and self.root not in real.parents:
            why = "is a symlink that leads" if real != _lexical(self.root, given) else "is"
            raise ToolError(f"{text}: {why} outside the workspace {self.root}")
        return real

    def _parts(self, path: str | os.PathLike[str]) -> tuple[str, ...]:
        return self.resolve(path).relative_to(self.root).parts

    @contextlib.contextmanager
    def _dir_fd(self, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory ``root/parts``, opened without following any symlink
        (made on the way when ``create``)."""
        fd = os.open(self.root, _DIR)
        try:
            for i, name in enumerate(parts):
                try:
                    if create:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, dir_fd=fd)
                    child = os.open(name, _DIR, dir_fd=fd)
                except OSError as exc:
                    raise ToolError(_os_reason("/".join(parts[: i + 1]), exc)) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    # -- tools -----------------------------------------------------------------------------

    def read_file(self, path: str) -> str:
        """The text of the file ``path`` (UTF-8). Raises :class:`ToolError` when it is outside
        the workspace, missing, not a regular file, over ``read_limit`` bytes, or binary."""
        parts = self._parts(path)
        if not parts:
            raise ToolError(f"{path}: is the workspace folder, not a file")
        with self._dir_fd(parts[:-1]) as dfd:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            except OSError as exc:
                raise ToolError(_os_reason(path, exc)) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > self.read_limit:
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ToolError(f"{path}: is a directory, not a file (list_dir lists it)")
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{path}: not a regular file")
            raise ToolError(
                f"{path}: {_size(info.st_size)}, over the read limit of {_size(self.read_limit)}"
            )
        with os.fdopen(fd, "rb") as f:
            data = f.read(self.read_limit + 1)
        if len(data) > self.read_limit:
            raise ToolError(f"{path}: over the read limit of {_size(self.read_limit)}")
        if b"\0" in data:
            raise ToolError(f"{path}: a binary file (read_file reads text only)")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path}: not UTF-8 text (read_file reads text only)") from None

    def write_file(self, path: str, content: str) -> int:
        """Write ``content`` (UTF-8) to ``path`` atomically, making parent folders; returns the
        bytes written. Never follows a symlink: one at ``path`` is replaced, one on the way
        refused. Raises :class:`ToolError` when outside, too large, or the OS refuses."""
        data = content.encode("utf-8")
        if len(data) > self.write_limit:
            raise ToolError(
                f"{path}: {_size(len(data))} of content, over the write limit of {_size(self.write_limit)}"
            )
        parts = self._lexical_parts(path)
        with self._dir_fd(parts[:-1], create=True) as dfd:
            tmp = f".{parts[-1]}.{uuid.uuid4().hex[:8]}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o644, dir_fd=dfd)
            except OSError as exc:
                raise ToolError(_os_reason(path, exc)) from None
            try:
                with os.fdopen(fd, "wb") as f:
                    old = _stat(parts[-1], dfd)
                    if old is not None and stat.S_ISREG(old.st_mode):
                        os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))  # keep its mode
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                old = _stat(parts[-1], dfd)
                if old is not None and stat.S_ISDIR(old.st_mode):
                    raise ToolError(f"{path}: is a directory")
                os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                if isinstance(exc, OSError):
                    raise ToolError(_os_reason(path, exc)) from None
                raise
            os.fsync(dfd)
        return len(data)

    def _lexical_parts(self, path: str) -> tuple[str, ...]:
        """``path``'s components under the root, symlinks not followed in the last one.

        The parent is resolved (it must stay inside); the last name is taken as it is, so a
        symlink there is replaced, not written through."""
        text = os.fspath(path)
        self.resolve(text)  # refuses ``..`` and links that lead outside, with the reason
        name = Path(text).name
        if name in ("", ".", ".."):
            raise ToolError(f"{text}: not a file name")
        parent = self.resolve(Path(text).parent if Path(text).parent != Path("") else ".")
        return (*parent.relative_to(self.root).parts, name)

    def list_dir(self, path: str = ".") -> list[DirEntry]:
        """The entries of the folder ``path``, sorted by name.

        Raises :class:`ToolError` when it is outside the workspace or not a folder."""
        with self._dir_fd(self._parts(path)) as fd:
            entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_symlink():
                        kind, size = "symlink", 0
                    elif entry.is_dir(follow_symlinks=False):
                        kind, size = "dir", 0
                    elif entry.is_file(follow_symlinks=False):
                        kind, size = "file", entry.stat(follow_symlinks=False).st_size
                    else:
                        kind, size = "other", 0
                    entries.append(DirEntry(entry.name, kind, size))
        entries.sort(key=lambda e: e.name)
        return entries

    def run_command(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run ``command`` with ``/bin/sh -c`` in the workspace, in the sandbox.

        ``timeout`` (seconds) defaults to ``command_timeout``. Raises :class:`ToolError` when
        commands are off, the user says no, or no sandbox is available and unconfined
        commands are not allowed."""
        if not command.strip():
            raise ToolError("run_command: the command is empty")
        if timeout is not None and not timeout > 0:
            raise ToolError(
                f"run_command: the timeout must be a positive number of seconds, got {timeout}"
            )
        bwrap = sandbox.bubblewrap()
        if bwrap is None:
            if not self.unconfined_commands:
                raise ToolError(
                    "commands are refused: no sandbox is available (bubblewrap is not installed "
                    "or cannot run here); --unconfined-commands runs them unconfined, each approved"
                )
            if not self._ask(f"[UNCONFINED: no sandbox] {command}"):
                raise ToolError(f"the user did not approve the unconfined command: {command}")
        elif not self._allowed(command):
            raise ToolError(
                "commands are off: pass --allow-commands or approve each one at the prompt"
                if self.approve is None
                else f"the user did not approve the command: {command}"
            )
        limit = self.command_timeout if timeout is None else min(timeout, self.command_timeout)
        if bwrap is None:
            argv = ["/bin/sh", "-c", command]
        else:
            argv = sandbox.bwrap_argv(bwrap, self.root, command, network=self.allow_network)
        try:
            return sandbox.run(
                argv,
                cwd=self.root,
                env=sandbox.scrubbed_env(self.root),
                timeout=limit,
                output_limit=self.output_limit,
                sandboxed=bwrap is not None,
            )
        except OSError as exc:
            raise ToolError(f"cannot start the command: {exc.strerror or exc}") from None

    @property
    def sandboxed(self) -> bool:
        """Whether commands run in bubblewrap on this machine."""
        return sandbox.bubblewrap() is not None

    def _allowed(self, command: str) -> bool:
        if self.allow_commands and (
            self.allowlist is None or any(fnmatch.fnmatchcase(command, p) for p in self.allowlist)
        ):
            return True
        return self._ask(command)

    def _ask(self, command: str) -> bool:
        if self.approve is None:
            return False
        with self._asking:
            return bool(self.approve(command))


def _lexical(root: Path, given: Path) -> Path:
    return Path(os.path.normpath(given if given.is_absolute() else root / given))


def _stat(name: str, dfd: int) -> os.stat_result | None:
    """``name`` in the folder ``dfd`` (not followed if a symlink), or None when missing."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _os_reason(path: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{path}: a symlink is in the way (tools never follow one here)"
    if exc.errno == errno.ENOTDIR:
        return f"{path}: a part of the path is not a folder (or is a symlink)"
    return f"{path}: {exc.strerror or exc}"


def _size(n: int) -> str:
    """``n`` bytes for people: 512 bytes, 64.0 KiB, 1.0 GiB."""
    if n < 1024:
        return f"{n} bytes"
    scaled = n / 1024
    for unit in ("KiB", "MiB"):
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GiB"
