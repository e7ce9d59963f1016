"""Writing a trace: where (the workflow directory, checked and held open), one writer
at a time (``writer.lock``), and the file itself (append-only, rotated by size).

Traces hold effect arguments, log fields and results, so they are private: directories
0700 and files 0600 whatever the umask (``DOEFF_FLOW_TRACE_MODE=640`` shares them with
the group). Nothing is written through a symbolic link or into another user's files: a
workflow directory or file owned by someone else, a trace directory anyone can write
without the sticky bit, a link or FIFO where a file should be — each is refused with a
clear error before the workflow runs. A start that fails (a full disk, the file size
limit, a read-only file system) leaves nothing behind: every descriptor closed, the lock
released, the directories it made removed, an existing trace untouched. Once it runs, a
failure never reaches the workflow: tracing stops with one line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat as st
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from doeff_flow_core.errors import (
    BadTraceSetting,
    ForeignOwner,
    SharedTraceDir,
    TraceDirUnwritable,
    WorkflowBusy,
)
from doeff_flow_core.tracefiles.chain import FileId, file_id
from doeff_flow_core.tracefiles.layout import LOCK_FILE_NAME, TRACE_FILE_NAME, part_name
from doeff_flow_core.tracefiles.lines import Backward
from doeff_flow_core.tracefiles.safeopen import Directory

MAX_BYTES_ENV: Final = "DOEFF_FLOW_MAX_TRACE_BYTES"
KEEP_ENV: Final = "DOEFF_FLOW_KEEP_ROTATED"
MODE_ENV: Final = "DOEFF_FLOW_TRACE_MODE"
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_KEEP: Final = 3
DEFAULT_MODE: Final = 0o600
# A writer touches its workflow directory when a run starts and when it writes after
# this long a pause: a daemon watching only the trace directory hears of it (IN_ATTRIB).
TOUCH_AFTER: Final = 30.0


@dataclass(frozen=True)
class Rotation:
    """When ``trace.jsonl`` is rotated: past ``max_bytes``, into ``trace.jsonl.1`` ...
    ``.keep`` (the oldest beyond ``keep`` is dropped). ``max_bytes`` 0 never rotates."""

    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP

    @classmethod
    def from_environment(cls, max_bytes: int | None = None, keep: int | None = None) -> Rotation:
        """Arguments first, then ``$DOEFF_FLOW_MAX_TRACE_BYTES`` / ``$DOEFF_FLOW_KEEP_ROTATED``."""
        return cls(
            max_bytes=_setting(max_bytes, MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
            keep=_setting(keep, KEEP_ENV, DEFAULT_KEEP),
        )


def _setting(given: int | None, variable: str, default: int) -> int:
    if given is not None:
        value: object = given
    else:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadTraceSetting(variable, text) from None
    if not isinstance(value, int) or value < 0:
        raise BadTraceSetting(variable, value)
    return value


def trace_mode(given: int | None = None) -> int:
    """The trace files' mode: ``given``, else ``$DOEFF_FLOW_TRACE_MODE`` (octal: ``640``),
    else 0600. Owner read-write at least; never executable, never writable by others."""
    text = "" if given is not None else os.environ.get(MODE_ENV, "").strip()
    if given is None and not text:
        return DEFAULT_MODE
    try:
        mode = given if given is not None else int(text, 8)
    except ValueError:
        raise BadTraceSetting(MODE_ENV, text) from None
    if mode & ~0o664 or mode & 0o600 != 0o600:
        raise BadTraceSetting(MODE_ENV, f"{mode:o}: owner rw, group r/w, others r at most")
    return mode


def directory_mode(file_mode: int) -> int:
    """The mode of directories holding files of ``file_mode``: who may read may enter."""
    return 0o700 | (0o050 if file_mode & 0o040 else 0) | (0o005 if file_mode & 0o004 else 0)


class Place:
    """A workflow's directory, created if need be and held open, and its files.

    The trace directory is the user's choice (followed, created); the workflow
    directory in it is never a link and must be the user's own. What this start created
    (``made``: directories, deepest last) is removed by ``discard`` if the start fails.
    """

    def __init__(self, trace_dir: Path, workflow_id: str, mode: int = DEFAULT_MODE) -> None:
        self.trace_dir = trace_dir
        self.workflow_id = workflow_id
        self.mode = mode
        self.path = trace_dir / workflow_id
        self.made: list[Path] = []
        self.made_workflow = False
        try:
            self._root = self._open_root()
            try:
                self.directory = self._open_workflow()
            except BaseException:
                if self.made_workflow:
                    with contextlib.suppress(OSError):
                        os.rmdir(self.workflow_id, dir_fd=self._root.fd)
                self._root.close()
                raise
        except BaseException as exc:
            self._remove_made()
            if isinstance(exc, OSError):
                raise TraceDirUnwritable(exc.filename or trace_dir, exc) from None
            raise

    def _open_root(self) -> Directory:
        created = not self.trace_dir.exists()
        if created:
            self.made = _missing_levels(self.trace_dir)
        os.makedirs(self.trace_dir, mode=directory_mode(self.mode), exist_ok=True)
        root = Directory.open(self.trace_dir)
        try:
            _check_room(root.fd)
        except BaseException:
            root.close()
            raise
        status = os.fstat(root.fd)
        if created and status.st_uid == os.geteuid():
            os.fchmod(root.fd, directory_mode(self.mode))
        elif status.st_mode & 0o002 and not status.st_mode & st.S_ISVTX:
            root.close()
            raise SharedTraceDir(self.trace_dir, st.S_IMODE(status.st_mode))
        return root

    def _open_workflow(self) -> Directory:
        created = True
        try:
            os.mkdir(self.workflow_id, directory_mode(self.mode), dir_fd=self._root.fd)
        except FileExistsError:
            created = False
        self.made_workflow = created
        directory = self._root.subdirectory(self.workflow_id)
        try:
            status = os.fstat(directory.fd)
            if status.st_uid != os.geteuid():
                raise ForeignOwner(self.path, status.st_uid)
            if created:
                os.fchmod(directory.fd, directory_mode(self.mode))
        except BaseException:
            directory.close()
            raise
        return directory

    def open_file(self, name: str, flags: int) -> int:
        """``name`` in the workflow directory, created with the trace mode: the user's own
        regular file, never a link (ForeignOwner, SymlinkRefused, NotRegularFile)."""
        fd = self.directory.open_file(name, flags | os.O_CREAT, self.mode)
        try:
            status = os.fstat(fd)
            if status.st_uid != os.geteuid():
                raise ForeignOwner(self.path / name, status.st_uid)
            if st.S_IMODE(status.st_mode) != self.mode:
                os.fchmod(fd, self.mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def gone(self) -> bool:
        """The workflow directory held open is no longer at its path (removed or moved)."""
        try:
            here = self._root.lstat(self.workflow_id)
        except FileNotFoundError:
            return True
        return file_id(here) != file_id(os.fstat(self.directory.fd))

    def recreate(self) -> None:
        """Open the trace and workflow directories afresh at their paths (creating them:
        the whole trace directory may have been removed)."""
        root = self._open_root()
        self._root.close()
        self._root = root
        directory = self._open_workflow()
        self.directory.close()
        self.directory = directory

    def touch(self) -> None:
        """Set the workflow directory's times to now (seen by a watch on its parent)."""
        with contextlib.suppress(OSError):
            os.utime(self.directory.fd)

    def rename(self, old: str, new: str) -> None:
        fd = self.directory.fd
        os.rename(old, new, src_dir_fd=fd, dst_dir_fd=fd)

    def identity(self, name: str) -> FileId | None:
        try:
            status = self.directory.lstat(name)
        except FileNotFoundError:
            return None
        return file_id(status)

    def close(self) -> None:
        self.directory.close()
        self._root.close()

    def remove_made(self, name: str) -> None:
        """Unlink ``name`` if this start made the workflow directory (so nobody else's
        file is there): called while the lock is still held."""
        if self.made_workflow:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.directory.fd)

    def discard(self) -> None:
        """Close, and remove the directories this start made if they are empty (another
        process's files in them keep them)."""
        if self.made_workflow:
            with contextlib.suppress(OSError):
                os.rmdir(self.workflow_id, dir_fd=self._root.fd)
        self.close()
        self._remove_made()

    def _remove_made(self) -> None:
        for path in reversed(self.made):
            try:
                os.rmdir(path)
            except OSError:
                break  # not empty, or gone: the levels above are not ours to judge
        self.made = []


def _missing_levels(path: Path) -> list[Path]:
    """The levels of ``path`` that do not exist yet, outermost first."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    missing.reverse()
    return missing


class WriterLock:
    """One writer per workflow: an advisory lock on ``writer.lock``. The kernel drops it
    when the process dies, so a crash never leaves the workflow locked. The file holds
    the holder's pid, for the error message."""

    def __init__(self, place: Place) -> None:
        try:
            self._fd = place.open_file(LOCK_FILE_NAME, os.O_RDWR)
        except OSError as exc:
            raise TraceDirUnwritable(exc.filename or place.path, exc) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self._fd)
            raise WorkflowBusy(place.workflow_id, holder) from None
        try:
            # Written over the old pid, then cut to length: a write that fails leaves
            # the file as it was.
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(self._fd, pid, 0)
            os.ftruncate(self._fd, len(pid))
        except OSError as exc:  # a full disk, the file size limit: give it all back
            place.remove_made(LOCK_FILE_NAME)
            self.release()
            raise TraceDirUnwritable(place.path, exc) from None

    def release(self) -> None:
        fd, self._fd = self._fd, -1  # released once: the number may be reused
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the lock


def _check_room(fd: int) -> None:
    """ENOSPC when the file system of ``fd`` has no block left for this user: a run on a
    full disk fails at its start, before it changes anything, not at its first record.
    (A file system that reports no blocks at all, as some virtual ones do, is taken at
    its word when written.)"""
    stats = os.fstatvfs(fd)
    free = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    if stats.f_blocks and not free:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class TraceWriter:
    """A workflow's trace: its place, its lock and ``trace.jsonl`` open for appending.

    Each ``write`` is one ``write(2)`` (a whole batch of lines), after a look that the
    file and directory are still the ones held: a trace file removed or replaced goes on
    in a new one; a workflow directory removed goes on in a new directory, with a new
    lock (if another run took the workflow meanwhile, tracing stops: two runs never
    interleave in one file).
    """

    def __init__(
        self,
        trace_dir: str | os.PathLike[str],
        workflow_id: str,
        rotation: Rotation | None = None,
        mode: int | None = None,
    ) -> None:
        self.rotation = rotation or Rotation()
        self.place = Place(Path(trace_dir), workflow_id, trace_mode(mode))
        self.path = self.place.path / TRACE_FILE_NAME
        self.failed: str | None = None
        self._recovered = False
        self._fd = -1
        self._made_trace = False  # trace.jsonl is this start's (removed if it fails)
        try:
            self._lock = WriterLock(self.place)
        except WorkflowBusy:
            self.place.close()  # the holder's directory and files: nothing here is ours
            raise
        except BaseException:
            self.place.discard()
            raise
        try:
            self._made_trace = self.place.identity(TRACE_FILE_NAME) is None
            self._open()
            self._cut_torn_tail()
        except BaseException as exc:
            self.abandon()
            if isinstance(exc, OSError):
                raise TraceDirUnwritable(exc.filename or self.place.path, exc) from None
            raise
        self.place.touch()
        self._touched = time.monotonic()

    def _open(self) -> None:
        # Read-write: a torn tail is found by reading it.
        self._fd = self.place.open_file(TRACE_FILE_NAME, os.O_RDWR | os.O_APPEND)
        status = os.fstat(self._fd)
        self._size = status.st_size
        self._identity = file_id(status)

    def _cut_torn_tail(self) -> None:
        """Drop a partial last line left by a writer killed mid-write, so that this run's
        records do not follow it on the same line (safe: we hold the lock, and readers
        never read past the last newline). A tail too long to scan is ended instead."""
        end = self._size
        if not end or os.pread(self._fd, 1, end - 1) == b"\n":
            return
        lines = Backward(self._fd, end)
        next(iter(lines), None)
        if lines.complete_end is None and lines.exhausted:
            os.write(self._fd, b"\n")  # no newline within reach: end the line instead
            self._size += 1
            return
        cut = lines.complete_end or 0
        os.ftruncate(self._fd, cut)
        self._size = cut

    def _check_place(self) -> None:
        """Write where the path leads: a directory or file that went away or was replaced
        is recreated (and said, once)."""
        if self.place.gone():
            self._close_file()
            self._lock.release()
            self.place.recreate()
            try:
                self._lock = WriterLock(self.place)
            except WorkflowBusy:
                raise OSError(
                    errno.EBUSY, "its directory was replaced and another run took it"
                ) from None
            self._open()
            self._say(f"workflow directory {self.place.path} was removed")
            self.place.touch()
            return
        identity = self.place.identity(TRACE_FILE_NAME)
        if identity == self._identity:
            return
        self._close_file()
        self._open()
        self._say(f"trace file {self.path} was {'removed' if identity is None else 'replaced'}")

    def _say(self, what: str) -> None:
        if not self._recovered:
            self._recovered = True
            print(f"doeff-flow: {what}; tracing goes on in a new one", file=sys.stderr)

    def write(self, text: str) -> None:
        """Append ``text``; on failure remember why and drop everything after."""
        if self.failed is not None or not text:
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        now = time.monotonic()
        if now - self._touched > TOUCH_AFTER:
            self.place.touch()
        self._touched = now
        try:
            self._check_place()
            limit = self.rotation.max_bytes
            if limit and self._size and self._size + len(data) > limit:
                self._rotate()
            self._size += len(data)
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            print(
                f"doeff-flow: tracing to {self.path} stopped: {self.failed}; "
                "the workflow continues untraced",
                file=sys.stderr,
            )

    def _rotate(self) -> None:
        """trace.jsonl -> .1 -> .2 ... between two writes, so no line is ever split."""
        self._close_file()
        keep = self.rotation.keep
        if keep:
            for index in range(keep - 1, 0, -1):
                if self.place.identity(part_name(index)) is not None:
                    self.place.rename(part_name(index), part_name(index + 1))
            self.place.rename(TRACE_FILE_NAME, part_name(1))
        else:
            os.unlink(TRACE_FILE_NAME, dir_fd=self.place.directory.fd)
        self._open()

    def _close_file(self) -> None:
        fd, self._fd = self._fd, -1  # never closed twice: the number may be reused
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self._close_file()
        self._lock.release()
        self.place.close()

    def abandon(self) -> None:
        """Close a writer that has written nothing, removing what its start made: an
        empty ``trace.jsonl`` it created, and the workflow directory if it made it (files
        first, while the lock is held; an existing trace is left as it was)."""
        self._close_file()
        if self._made_trace or self.place.made_workflow:
            with contextlib.suppress(OSError):
                if not self.place.directory.lstat(TRACE_FILE_NAME).st_size:
                    os.unlink(TRACE_FILE_NAME, dir_fd=self.place.directory.fd)
        self.place.remove_made(LOCK_FILE_NAME)
        self._lock.release()
        self.place.discard()
