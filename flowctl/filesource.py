"""``FileSource``: the data-source interface over ``<trace_dir>/<workflow_id>/trace.jsonl``.

Files are never read whole: the latest records come from the end (the core's
``read_last``), new ones from a stored offset (``read_from``), and a live feed costs one
``stat`` per poll while nothing changes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from doeff_flow_core import InvalidWorkflowId, LiveTrace, effective_status
from doeff_flow_core.ids import is_workflow_id, validate_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME
from doeff_flow_core.reader import (
    NO_VALID_RECORDS,
    WorkflowSummary,
    read_from,
    read_last,
    scan_workflows,
    summarize,
)
from flowctl.errors import (
    BadWorkflowId,
    SourceUnavailable,
    TraceDirMissing,
    TraceUnreadable,
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
            tail = read_last(path, last)
        except FileNotFoundError:
            self._check_root()  # a missing trace directory is its own error
            raise WorkflowNotFound(workflow_id, self.location) from None
        except OSError as exc:
            raise TraceUnreadable(workflow_id, _strerror(exc), io_error=True) from None
        if not tail.records and (tail.skipped or tail.torn):
            raise TraceUnreadable(workflow_id, NO_VALID_RECORDS)
        return History(workflow_id, tail.records, tail.skipped, tail.torn)

    def status(self, record: LiveTrace) -> str:
        return effective_status(record)

    def follow(
        self, workflow_id: str, *, snapshot: int = DEFAULT_SNAPSHOT, every_record: bool = False
    ) -> TraceFeed:
        return TraceFeed(self._path(workflow_id), workflow_id, snapshot, every_record)

    def follow_all(self) -> TraceDirFeed:
        return TraceDirFeed(self._root)


class TraceFeed:
    """A tail of one trace file: a snapshot of its last records, then each new one."""

    def __init__(self, path: Path, workflow_id: str, snapshot: int, every_record: bool) -> None:
        self._path = path
        self._workflow_id = workflow_id
        self._snapshot = snapshot
        self._every_record = every_record
        self._offset: int | None = None  # None: take a snapshot next
        self._key: FileKey | None = None
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
        self._offset = self._key = None

    def _check(self) -> Update | None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            if not self._present and self._key is None:
                return None
            self._present, self._offset, self._key = False, None, None
            return Update(present=False, reset=True)
        except OSError as exc:
            raise TraceUnreadable(self._workflow_id, _strerror(exc), io_error=True) from None
        key = _key(stat)
        if key == self._key:
            return None
        reset = False
        if self._key is not None and (key[0] != self._key[0] or key[1] < (self._offset or 0)):
            self._offset, reset = None, True  # replaced or truncated: start again
        self._key, self._present = key, True
        try:
            return self._read(stat.st_size, reset)
        except FileNotFoundError:
            return None  # removed between stat and open: the next poll says so
        except OSError as exc:
            raise TraceUnreadable(self._workflow_id, _strerror(exc), io_error=True) from None

    def _read(self, size: int, reset: bool) -> Update:
        offset = self._offset
        jump = not self._every_record and offset is not None and size - offset > JUMP_BYTES
        if offset is None or jump:
            tail = read_last(self._path, self._snapshot, end=size)
            self._offset = tail.end
            return Update(tail.records, reset=reset, skipped=tail.skipped)
        chunk = read_from(self._path, offset, READ_LIMIT)
        if chunk.reset:
            self._offset = None
            return self._read(size, True)
        self._offset = chunk.offset
        if chunk.offset < size and chunk.records:
            self._key = None  # more to read (limited chunk): do not wait for a change
        return Update(chunk.records, reset=reset, skipped=chunk.skipped)


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
