"""``FileSource``: the data-source interface over ``<trace_dir>/<workflow_id>/trace.jsonl``.

Files are never read whole and never opened unsafely: everything goes through the core's
``tracefiles`` (the latest records from the end, new ones from a cursor that reads on
across rotation), and a live feed costs one ``lstat`` per poll while nothing changes.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from doeff_flow_core import InvalidWorkflowId, LiveTrace, effective_status
from doeff_flow_core.errors import SymlinkRefused
from doeff_flow_core.ids import is_workflow_id, validate_workflow_id
from doeff_flow_core.liveness import derive_status, process_alive
from doeff_flow_core.protocol import NO_VALID_RECORDS
from doeff_flow_core.tracefiles.chain import chain_of
from doeff_flow_core.tracefiles.cursor import Cursor, find_after, read_on, tail
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME, trace_file
from doeff_flow_core.tracefiles.lines import RawLine
from doeff_flow_core.tracefiles.reading import parse_line, read_history
from doeff_flow_core.tracefiles.safeopen import Directory
from doeff_flow_core.tracefiles.scan import WorkflowSummary, scan_workflows, summarize
from flowctl.errors import (
    BadWorkflowId,
    SourceUnavailable,
    TraceDirMissing,
    TraceUnreadable,
    WorkflowLinked,
    WorkflowNotFound,
)
from flowctl.sources.base import (
    DEFAULT_SNAPSHOT,
    DirectoryUpdate,
    FeedUpdate,
    History,
    WorkflowEntry,
    workflow_entry,
)

# Where a feed resumes: just after the record of this run and step (None: a snapshot).
After = tuple[str | None, int]
# A watch that finds more than this much new data skips to the latest records.
JUMP_BYTES = 1024 * 1024
READ_LIMIT = 8 * 1024 * 1024
# A directory feed spends at most 1/DUTY_DIVISOR of the time checking for changes.
DUTY_DIVISOR = 50
# Processes reading a large directory's traces for ``list_workflows`` (this one parses
# every record they find: more would wait on it).
MAX_READERS = 4

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


def usable_cores() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
        return trace_file(self._root, checked_id(workflow_id))

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
            summaries = scan_workflows(self._root, processes=min(usable_cores(), MAX_READERS))
        except OSError as exc:
            raise self._unavailable(exc) from None
        # One listing is one moment: each writer is asked after once, however many of
        # its records are running.
        alive = functools.cache(process_alive)
        entries = []
        for summary in summaries:
            latest, status = summary.latest, None
            if latest is not None:
                status = derive_status(
                    latest.status, latest.pid, latest.host, latest.pid_start, alive
                )
            entries.append(workflow_entry(summary.workflow_id, latest, summary.problem, status))
        return entries

    def workflow_ids(self) -> list[str]:
        try:
            return _workflow_names(self._root)
        except OSError:
            return []

    def history(self, workflow_id: str, last: int) -> History:
        path = self._path(workflow_id)
        try:
            tail = read_history(path, last)
        except SymlinkRefused:
            raise WorkflowLinked(workflow_id, self.location) from None
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


def existing_trace(path: Path, location: str) -> Path | None:
    """``path`` when it or a rotated part of it exists, else None; never through a
    symbolic link (WorkflowLinked)."""
    try:
        with Directory.open(path.parent.parent) as root, root.subdirectory(path.parent.name) as wf:
            return path if chain_of(wf).parts else None
    except SymlinkRefused:
        raise WorkflowLinked(path.parent.name, location) from None
    except (FileNotFoundError, NotADirectoryError):
        return None


class TraceFeed:
    """A tail of one trace: a snapshot of its last records, then each new one.

    A cursor (the core's ``tracefiles.cursor``) reads on across rotation, so a rotation
    between two polls loses and repeats nothing; a trace replaced by something else, or
    truncated, starts again (``reset``). A poll while nothing changed costs one ``lstat``.

    With ``after`` (a ``(run, step)`` another feed last delivered) there is no snapshot:
    the feed starts just after that record, so a reader switching feeds mid-trace loses
    and repeats nothing.
    """

    def __init__(
        self,
        path: Path,
        workflow_id: str,
        snapshot: int,
        every_record: bool,
        after: After | None = None,
    ) -> None:
        self._path = path
        self._workflow_id = workflow_id
        self._snapshot = snapshot
        self._every_record = every_record
        self._after = after
        self._cursor: Cursor | None = None  # None: no snapshot taken yet
        self._key: FileKey | None = None  # of trace.jsonl when last read to its end
        self._present = False

    def poll(self, timeout: float) -> FeedUpdate:
        update = self._check()
        if update is None and timeout > 0:
            time.sleep(timeout)
            update = self._check()
        return update if update is not None else FeedUpdate(present=self._present)

    def pace(self, interval: float) -> float:
        return interval

    def close(self) -> None:
        self._cursor, self._key = None, None

    def _open(self) -> Directory:
        root = Directory.open(self._path.parent.parent)
        try:
            return root.subdirectory(self._path.parent.name)
        finally:
            root.close()

    def _check(self) -> FeedUpdate | None:
        try:
            with self._open() as directory:
                return self._look(directory)
        except SymlinkRefused:
            if self._present:
                return self._gone()  # swapped for a link while followed: gone
            raise WorkflowLinked(self._workflow_id, str(self._path.parent.parent)) from None
        except FileNotFoundError:
            return self._gone() if not self._path.parent.exists() else None
        except OSError as exc:
            raise TraceUnreadable(self._workflow_id, _strerror(exc), io_error=True) from None

    def _gone(self) -> FeedUpdate | None:
        if not self._present and self._cursor is None:
            return None
        self.close()
        self._present = False
        return FeedUpdate(present=False, reset=True)

    def _look(self, directory: Directory) -> FeedUpdate | None:
        try:
            key: FileKey | None = _key(directory.lstat(TRACE_FILE_NAME))
        except FileNotFoundError:
            key = None
        if self._cursor is None:
            if key is None and not chain_of(directory).parts:
                return self._gone()
            if self._after is not None:
                self._resume(directory, self._after)
            else:
                return self._take_snapshot(directory, reset=False)
        assert self._cursor is not None
        if key is not None and key == self._key:
            return None
        if (
            not self._every_record
            and key is not None
            and self._cursor.ident is not None
            and self._cursor.ident[1] == key[0]
            and key[1] - self._cursor.offset > JUMP_BYTES
        ):
            return self._take_snapshot(directory, reset=False)
        step = read_on(directory, self._cursor, READ_LIMIT)
        if step.reset:  # replaced or truncated: start again from its latest records
            return self._take_snapshot(directory, reset=True)
        self._key = None if step.behind else key  # more to read: do not wait for a change
        records = tuple(record for raw, _ in step.lines if (record := parse_line(raw)) is not None)
        skipped = step.skipped + sum(1 for raw, _ in step.lines if raw.data.strip()) - len(records)
        records = self._past_after(records)
        if not (records or skipped):
            return None
        return FeedUpdate(records, skipped=skipped)

    def _past_after(self, records: tuple[LiveTrace, ...]) -> tuple[LiveTrace, ...]:
        """``records`` less those of ``after``'s run up to its step, once: a resume that
        found no record to start after reads from the oldest part."""
        if self._after is None:
            return records
        run, last = self._after
        self._after = None
        return tuple(record for record in records if record.run != run or record.step > last)

    def _resume(self, directory: Directory, after: After) -> None:
        """The cursor just after the last record of ``after``'s run at or before its step
        (the core's ``find_after``), read on from there."""
        run, last = after

        def seen(line: RawLine) -> bool:
            record = parse_line(line)
            return record is not None and record.run == run and record.step <= last

        newest = chain_of(directory).newest
        self._cursor = Cursor()
        self._present = True
        if newest is not None:
            self._cursor.move(find_after(directory, seen, (newest.ident, newest.size)))

    def _ident(self) -> tuple[int, int] | None:
        return None if self._cursor is None else self._cursor.ident

    def _take_snapshot(self, directory: Directory, reset: bool) -> FeedUpdate:
        try:
            found = tail(directory, self._snapshot, parse_line)
        except FileNotFoundError:
            return FeedUpdate(present=False, reset=reset)
        self._cursor = Cursor()
        self._cursor.move(found.position)
        self._present = True
        try:
            self._key = _key(directory.lstat(TRACE_FILE_NAME))
        except FileNotFoundError:
            self._key = None
        if self._key is not None and (found.ident, found.end) != (self._ident(), self._key[1]):
            self._key = None  # not read to trace.jsonl's end: look again
        return FeedUpdate(self._past_after(tuple(found.items)), reset=reset, skipped=found.skipped)


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
            path = trace_file(self._root, name)
            try:
                key: FileKey | None = _key(os.lstat(path))
            except OSError:
                key = None
            if name in self._keys and self._keys[name] == key:
                continue
            self._keys[name] = key
            changed.append(entry_of(summarize(name, path)))
        if not (changed or removed or first):
            return None
        return DirectoryUpdate(tuple(changed), removed, True, first)
