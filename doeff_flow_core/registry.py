"""Where flowd looks for traces, kept in the state directory (``$XDG_STATE_HOME/doeff-flow``).

Two lists of absolute paths, one a line:

- ``trace-dirs``: every trace directory a writer used (``register_trace_dir``), so flowd
  finds traces from any project without configuration;
- ``flowd-roots``: the roots flowd was asked to add (``roots.add``, or ``flowctl roots
  add`` while no flowd runs), added again whenever flowd starts.

Opened safely: the state directory without following a link, and it must be the user's;
each file relative to it, without following a link, a regular file of the user's; reads
bounded (MAX_BYTES). Every change is made under an exclusive ``flock`` on ``NAME.lock``
(opened the same way): an append, or a rewrite (a temporary file, 0600, in the same
directory, renamed over the list), which reads the list again and starts over if it
changed after it was read (a writer of an older version appends without the lock).

A registered directory that no longer exists is forgotten (``forget_missing``) when
flowd starts and when ``flowctl roots`` lists them. Registering is best effort: a
workflow is never hurt because the registry cannot be written.

Which directories may be roots at all (``system_refusal``, ``owner_refusal``) is decided
here too, for flowd's ``roots.add`` and for ``flowctl roots add`` alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from doeff_flow_core.locations import state_dir

REGISTRY_NAME: Final = "trace-dirs"
ADDED_ROOTS_NAME: Final = "flowd-roots"
MAX_BYTES: Final = 4 * 1024 * 1024  # a list longer than this is read this far
LOCK_WAIT: Final = 2.0  # seconds to wait for another process's change to end
REWRITE_TRIES: Final = 5
# Never roots: the whole system, and the kernel's own trees (a pid directory looks like a
# workflow directory).
SYSTEM_DIRECTORIES: Final = ("/proc", "/sys", "/dev")
_ENCODING: Final = ("utf-8", "surrogateescape")  # any byte of a path survives a round trip


class StateUnsafe(OSError):
    """The state directory or one of its files is not one to trust (or to write)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(errno.EPERM, f"{os.fspath(path)}: {reason}; not used")


class StateBusy(OSError):
    """Another process held a list's lock for longer than LOCK_WAIT."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EAGAIN, f"{os.fspath(path)}: locked by another process")


def system_refusal(path: str) -> str | None:
    """Why ``path`` (absolute, links resolved) may never be a root, or None."""
    if path == "/":
        return "the root of the file system, not a trace directory"
    for top in SYSTEM_DIRECTORIES:
        if path == top or path.startswith(top + "/"):
            return f"under {top}, the system's own files, not a trace directory"
    return None


def owner_refusal(path: str, uid: int) -> str | None:
    """Why ``path`` may not be a root of user ``uid`` (not theirs), or None; OSError when
    it cannot be looked at."""
    owner = os.stat(path).st_uid
    if owner != uid:
        return f"owned by uid {owner}, not by this user (uid {uid})"
    return None


@dataclass(frozen=True)
class PathList:
    """One list of absolute paths in the state directory."""

    name: str

    @property
    def path(self) -> Path:
        return state_dir() / self.name

    def read(self) -> list[str]:
        """The entries, in order, each once ([] when the list cannot be read safely)."""
        try:
            with _state_directory(create=False) as directory:
                return self._entries(directory)[0]
        except OSError:
            return []

    def add(self, entry: str) -> bool:
        """Append ``entry`` unless it is there; False when it was. OSError when the list
        cannot be written (or not safely)."""
        if not entry.startswith("/") or "\n" in entry or "\0" in entry:
            raise ValueError(f"not a path a list can hold: {entry!r}")
        with _state_directory(create=True) as directory, self._locked(directory):
            if entry in self._entries(directory)[0]:
                return False
            fd = _open(directory, self.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, (entry + "\n").encode(*_ENCODING))
            finally:
                os.close(fd)
        return True

    def remove(self, unwanted: Callable[[str], bool]) -> list[str]:
        """Drop every entry ``unwanted`` says so of; the entries dropped. OSError when
        the list cannot be rewritten (or not safely)."""
        try:
            with _state_directory(create=False) as directory, self._locked(directory):
                return self._rewrite(directory, unwanted)
        except FileNotFoundError:
            return []  # no state directory: nothing registered

    # -- inside the state directory ------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, directory: int) -> Iterator[None]:
        fd = _open(directory, f"{self.name}.lock", os.O_RDWR | os.O_CREAT)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateBusy(self.path) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _entries(self, directory: int) -> tuple[list[str], tuple[int, int, int] | None]:
        """The entries, and the file's identity as read (None: there is no file)."""
        try:
            fd = _open(directory, self.name, os.O_RDONLY)
        except FileNotFoundError:
            return [], None
        try:
            status = os.fstat(fd)
            data = _read_bounded(fd)
        finally:
            os.close(fd)
        text = data.decode(*_ENCODING)
        if len(data) > MAX_BYTES:  # the last line may be cut: not an entry
            text = text[: text.rfind("\n") + 1]
        seen: dict[str, None] = {}
        for line in text.split("\n"):
            if line.startswith("/") and "\0" not in line:
                seen.setdefault(line, None)
        return list(seen), _identity(status)

    def _rewrite(self, directory: int, unwanted: Callable[[str], bool]) -> list[str]:
        for _ in range(REWRITE_TRIES):
            entries, identity = self._entries(directory)
            if identity is None:
                return []
            if identity[1] > MAX_BYTES:
                raise StateUnsafe(self.path, f"over {MAX_BYTES} bytes; not rewritten")
            dropped = [entry for entry in entries if unwanted(entry)]
            if not dropped:
                return []
            kept = "".join(f"{entry}\n" for entry in entries if entry not in dropped)
            temporary = f".{self.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            fd = _open(directory, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                try:
                    os.write(fd, kept.encode(*_ENCODING))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                now = os.stat(self.name, dir_fd=directory, follow_symlinks=False)
                if _identity(now) == identity:  # nothing appended since it was read
                    os.rename(temporary, self.name, src_dir_fd=directory, dst_dir_fd=directory)
                    return dropped
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=directory)
        raise StateBusy(self.path)


REGISTRY: Final = PathList(REGISTRY_NAME)
ADDED_ROOTS: Final = PathList(ADDED_ROOTS_NAME)


def registry_path() -> Path:
    return REGISTRY.path


def registered_trace_dirs() -> list[Path]:
    return [Path(entry) for entry in REGISTRY.read()]


def register_trace_dir(trace_dir: Path) -> bool:
    """Add ``trace_dir`` (absolute) to the registry unless it is there; True if it is now."""
    entry = str(trace_dir.resolve())
    try:
        REGISTRY.add(entry)
    except (OSError, ValueError):
        return False
    return True


def unregister_trace_dir(path: str) -> bool:
    """Drop ``path`` from the registry; whether it was there. OSError when the registry
    cannot be rewritten."""
    return bool(REGISTRY.remove(lambda entry: entry == path))


def missing(path: str) -> bool:
    """Whether ``path`` no longer exists as a directory (a directory that cannot be
    looked at now, a permission or an I/O error, is not missing)."""
    try:
        return not stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def forget_missing() -> list[str]:
    """Drop the registered directories that no longer exist; those dropped. OSError when
    the registry cannot be rewritten."""
    return REGISTRY.remove(missing)


# -- opening ---------------------------------------------------------------------------


@contextlib.contextmanager
def _state_directory(create: bool) -> Iterator[int]:
    """The state directory, open (never through a link, and the user's own)."""
    path = state_dir()
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise StateUnsafe(path, "a symbolic link") from None
        raise
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise StateUnsafe(path, f"owned by uid {owner}, not by this user")
        yield fd
    finally:
        os.close(fd)


def _open(directory: int, name: str, flags: int) -> int:
    """``name`` in the state directory: never through a link; a regular file of the
    user's (made 0600 when created)."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateUnsafe(state_dir() / name, "a symbolic link") from None
        raise
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
        os.close(fd)
        raise StateUnsafe(state_dir() / name, "not a regular file of this user's")
    return fd


def _read_bounded(fd: int) -> bytes:
    """At most MAX_BYTES + 1 bytes (one more tells the list was longer)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BYTES:
        chunk = os.read(fd, MAX_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _identity(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)
