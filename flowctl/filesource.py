"""``FileSource``: the data-source interface over ``<trace_dir>/<workflow_id>/trace.jsonl``.

Files are never read whole: the latest records come from the end (the core's
``read_last``, and its rotated parts when asked for more: ``read_history``), new ones
from a stored offset of an open file (``read_fd_from``), and a live feed costs one
``stat`` per poll while nothing changes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

from doeff_flow_core import InvalidWorkflowId, LiveTrace, effective_status
from doeff_flow_core.ids import is_workflow_id, validate_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME, rotated_path
from doeff_flow_core.reader import (
    NO_VALID_RECORDS,
    WorkflowSummary,
    read_fd_from,
    read_fd_last,
    read_history,
    rotated_parts,
    scan_workflows,
    summarize,
)
from flowctl.errors import (
    BadWorkflowId,
    SourceUnavailable,
    TraceDirMissing,
    TraceUnreadable,
    WorkflowLinked,
    WorkflowNotFound,
)
from flowctl.source import (
    DEFAULT_SNAPSHOT,
    DirectoryUpdate,
    History,
    Update,
    WorkflowEntry,
    workflow_entry,
)

# A watch that finds more than this much new data skips to the latest records.
JUMP_BYTES = 1024 * 1024
READ_LIMIT = 8 * 1024 * 1024
# A directory feed spends at most 1/DUTY_DIVISOR of the time checking for changes.
DUTY_DIVISOR = 50

FileKey = tuple[int, int, int]  # inode, size, mtime in ns


def _key(stat: os.stat_result) -> FileKey:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _strerror(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def checked_id(workflow_id: str) -> str:
    try:
        return validate_workflow_id(workflow_id)
    except InvalidWorkflowId as exc:
        raise BadWorkflowId(str(exc)) from None


def entry_of(summary: WorkflowSummary) -> WorkflowEntry:
    return workflow_entry(summary.workflow_id, summary.latest, summary.problem)


def _workflow_names(root: Path) -> list[str]:
    names = []
    with os.scandir(root) as entries:
        for entry in entries:
            if is_workflow_id(entry.name) and entry.is_dir(follow_symlinks=False):
                names.append(entry.name)
    names.sort()
    return names


class FileSource:
    """Workflows read straight from a trace directory."""

    kind = "files"

    def __init__(self, trace_dir: str | os.PathLike[str]) -> None:
        self._root = Path(trace_dir)

    @property
    def location(self) -> str:
        return str(self._root)

    def _path(self, workflow_id: str) -> Path:
        return self._root / checked_id(workflow_id) / TRACE_FILE_NAME

    def _unavailable(self, exc: OSError) -> Exception:
        if isinstance(exc, FileNotFoundError):
            return TraceDirMissing(self.location)
        if isinstance(exc, NotADirectoryError):
            return TraceDirMissing(self.location, "is not a directory")
        return SourceUnavailable(self.location, _strerror(exc))

    def _check_root(self) -> None:
        try:
            with os.scandir(self._root):
                pass
        except OSError as exc:
            raise self._unavailable(exc) from None

    def list_workflows(self) -> list[WorkflowEntry]:
        try:
            summaries = scan_workflows(self._root)
        except OSError as exc:
            raise self._unavailable(exc) from None
        return [entry_of(summary) for summary in summaries]

    def workflow_ids(self) -> list[str]:
        try:
            return _workflow_names(self._root)
        except OSError:
            return []

    def history(self, workflow_id: str, last: int) -> History:
        path = self._path(workflow_id)
        try:
            if is_link(path.parent) or is_link(path):
                raise WorkflowLinked(workflow_id, self.location)
            tail = read_history(path, last)
        except FileNotFoundError:
            self._check_root()  # a missing trace directory is its own error
            raise WorkflowNotFound(workflow_id, self.location) from None
        except OSError as exc:
            raise TraceUnreadable(workflow_id, _strerror(exc), io_error=True) from None
        if not tail.records and (tail.skipped or tail.torn):
            raise TraceUnreadable(workflow_id, NO_VALID_RECORDS)
        return History(workflow_id, tail.records, tail.skipped, tail.torn)

    def trace_path(self, workflow_id: str) -> Path:
        path = existing_trace(self._path(workflow_id), self.location)
        if path is None:
            self._check_root()  # a missing trace directory is its own error
            raise WorkflowNotFound(workflow_id, self.location)
        return path

    def status(self, record: LiveTrace) -> str:
        return effective_status(record)

    def follow(
        self, workflow_id: str, *, snapshot: int = DEFAULT_SNAPSHOT, every_record: bool = False
    ) -> TraceFeed:
        return TraceFeed(self._path(workflow_id), workflow_id, snapshot, every_record)

    def follow_all(self) -> TraceDirFeed:
        return TraceDirFeed(self._root)


class _Open:
    """An open trace file and its inode: a rotated part keeps being read through it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inode = os.fstat(fd).st_ino

    def close(self) -> None:
        os.close(self.fd)


def open_trace(path: Path) -> _Open:
    """``path`` opened for reading, never through a symbolic link (the workflow directory
    or the file itself: WorkflowLinked / ELOOP), never a FIFO or device (ENXIO-like)."""
    if is_link(path.parent):
        raise WorkflowLinked(path.parent.name, str(path.parent.parent))
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return _Open(fd)
    except BaseException:
        os.close(fd)
        raise


def existing_trace(path: Path, location: str) -> Path | None:
    """``path`` when it or a rotated part of it exists, else None; never through a
    symbolic link (WorkflowLinked)."""
    if is_link(path.parent) or is_link(path):
        raise WorkflowLinked(path.parent.name, location)
    return path if path.exists() or rotated_parts(path) else None


def is_link(path: Path) -> bool:
    try:
        return S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


class TraceFeed:
    """A tail of one trace: a snapshot of its last records, then each new one.

    The file being read stays open, so a rotation (``trace.jsonl`` renamed to
    ``trace.jsonl.1`` and a fresh one opened) loses and repeats nothing: the old file is
    read to its end through its descriptor, then any part rotated after it (a rotation
    between two polls can happen more than once), then the new ``trace.jsonl`` from 0.
    A trace replaced by something else, or truncated, starts again (``reset``).
    """

    def __init__(self, path: Path, workflow_id: str, snapshot: int, every_record: bool) -> None:
        self._path = path
        self._workflow_id = workflow_id
        self._snapshot = snapshot
        self._every_record = every_record
        self._files: list[_Open] = []  # the file read at _offset first, the newest last
        self._offset = 0
        self._key: FileKey | None = None  # of the path when last looked at
        self._present = False

    def poll(self, timeout: float) -> Update:
        update = self._check()
        if update is None and timeout > 0:
            time.sleep(timeout)
            update = self._check()
        return update if update is not None else Update(present=self._present)

    def pace(self, interval: float) -> float:
        return interval

    def close(self) -> None:
        self._forget()

    def _forget(self) -> None:
        for trace in self._files:
            with contextlib.suppress(OSError):
                trace.close()
        self._files, self._offset, self._key = [], 0, None

    def _check(self) -> Update | None:
        try:
            if len(self._files) > 1:
                return self._drain()
            return self._look()
        except WorkflowLinked:
            return self._gone()
        except FileNotFoundError:
            return None  # removed while looked at: the next poll says so
        except OSError as exc:
            raise TraceUnreadable(self._workflow_id, _strerror(exc), io_error=True) from None

    def _gone(self) -> Update | None:
        if not self._present and not self._files:
            return None
        self._forget()
        self._present = False
        return Update(present=False, reset=True)

    def _look(self) -> Update | None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return self._gone()
        key = _key(stat)
        if key == self._key:
            return None
        if not self._files:
            return self._start(reset=False)
        current = self._files[0]
        if key[0] == current.inode:
            self._key = key
            size = stat.st_size
            if size < self._offset:
                return self._start(reset=True)  # truncated: start again
            if not self._every_record and size - self._offset > JUMP_BYTES:
                return self._take_snapshot(current, reset=False)
            return self._read_current(size)
        followers = self._rotated_after(current.inode)
        if followers is None:
            return self._start(reset=True)  # replaced, not rotated: start again
        self._files += followers
        return self._drain()

    def _start(self, reset: bool) -> Update:
        self._forget()
        trace = open_trace(self._path)
        self._files, self._present = [trace], True
        return self._take_snapshot(trace, reset)

    def _take_snapshot(self, trace: _Open, reset: bool) -> Update:
        self._key = _key(os.fstat(trace.fd))
        tail = read_fd_last(trace.fd, self._snapshot)
        self._offset = tail.end
        return Update(tail.records, reset=reset, skipped=tail.skipped)

    def _read_current(self, size: int) -> Update:
        chunk = read_fd_from(self._files[0].fd, self._offset, READ_LIMIT)
        self._offset = chunk.offset
        if chunk.offset < size and chunk.records:
            self._key = None  # more to read (limited chunk): do not wait for a change
        return Update(chunk.records, skipped=chunk.skipped)

    def _rotated_after(self, inode: int) -> list[_Open] | None:
        """The files written after the one of ``inode``, oldest first, opened: the parts
        rotated after it and the new trace.jsonl; None if it is not a rotated part."""
        index = 1
        while True:
            part = rotated_path(self._path, index)
            try:
                found = os.stat(part, follow_symlinks=False).st_ino == inode
            except FileNotFoundError:
                return None
            if found:
                break
            index += 1
        followers: list[_Open] = []
        try:
            for newer in range(index - 1, 0, -1):
                followers.append(open_trace(rotated_path(self._path, newer)))
            followers.append(open_trace(self._path))
        except BaseException:
            for trace in followers:
                trace.close()
            raise
        return followers

    def _drain(self) -> Update:
        """Records from the rotated file being finished, moving on to the next when it
        has no more (at most READ_LIMIT bytes per poll)."""
        records: list[LiveTrace] = []
        skipped = 0
        while len(self._files) > 1 and not records:
            chunk = read_fd_from(self._files[0].fd, self._offset, READ_LIMIT)
            records += chunk.records
            skipped += chunk.skipped
            if chunk.offset == self._offset or chunk.offset >= os.fstat(self._files[0].fd).st_size:
                self._files.pop(0).close()  # finished (a torn last line stays torn)
                self._offset = 0
                self._key = None
            else:
                self._offset = chunk.offset
        return Update(tuple(records), skipped=skipped)


class TraceDirFeed:
    """The latest record of every workflow in a trace directory, as they change.

    Each poll stats the directory and each trace; the poll interval stretches so that
    checking never takes more than 1/DUTY_DIVISOR of the time, however many workflows.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._dir_key: FileKey | None = None
        self._names: list[str] = []
        self._keys: dict[str, FileKey | None] = {}
        self._present: bool | None = None
        self._cost = 0.0

    def poll(self, timeout: float) -> DirectoryUpdate:
        update = self._check()
        if update is None and timeout > 0:
            time.sleep(self.pace(timeout))
            update = self._check()
        return update if update is not None else DirectoryUpdate(present=bool(self._present))

    def pace(self, interval: float) -> float:
        return max(interval, self._cost * DUTY_DIVISOR)

    def close(self) -> None:
        self._keys.clear()

    def _check(self) -> DirectoryUpdate | None:
        started = time.perf_counter()
        try:
            update = self._scan()
        finally:
            self._cost = time.perf_counter() - started
        return update

    def _scan(self) -> DirectoryUpdate | None:
        first = self._present is None
        try:
            dir_key = _key(os.stat(self._root))
            if dir_key != self._dir_key:
                self._names = _workflow_names(self._root)
                self._dir_key = dir_key
        except (FileNotFoundError, NotADirectoryError):
            removed = tuple(self._keys)
            was_present = self._present
            self._present, self._dir_key, self._names = False, None, []
            self._keys.clear()
            if was_present is False:
                return None
            return DirectoryUpdate(removed=removed, present=False, first=first)
        except OSError as exc:
            raise SourceUnavailable(str(self._root), _strerror(exc)) from None
        self._present = True
        names = set(self._names)
        removed = tuple(name for name in self._keys if name not in names)
        for name in removed:
            del self._keys[name]
        changed = []
        for name in self._names:
            path = self._root / name / TRACE_FILE_NAME
            try:
                key: FileKey | None = _key(os.stat(path))
            except OSError:
                key = None
            if name in self._keys and self._keys[name] == key:
                continue
            self._keys[name] = key
            changed.append(entry_of(summarize(name, path)))
        if not (changed or removed or first):
            return None
        return DirectoryUpdate(tuple(changed), removed, True, first)
