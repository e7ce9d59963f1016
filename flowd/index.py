"""The index: every workflow under every root, keyed by (root, workflow_id).

Each entry keeps the latest record (as stored) and the offset just after the last
complete line read, so new records are read from there and nothing else. ``refresh``
is the one place a trace is tailed; it notices a truncated or replaced file (smaller
than the offset, another inode, or no newline just before the offset: read again from
the start, a new *generation*), a rotated file (found among ``trace.jsonl.1 ...`` by its
identity, finished from the stored offset, then the newer parts and the new
``trace.jsonl`` from 0: the same generation, no record lost or repeated), a deleted
file, a torn last line (left until it ends) and over-long lines (skipped). Every method
is synchronous and does a bounded amount of work; the daemon decides when to call it,
and fans out the ``Update``\\ s it returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.liveness import derive_status, process_alive
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME
from doeff_flow_core.tracefiles.lines import MAX_LINE_BYTES
from flowd.traces import (
    CHUNK,
    FileIdent,
    Line,
    Position,
    chain_extent,
    find_part,
    ident_of,
    newer_part,
    open_part,
    open_trace,
    split_lines,
    tail_of,
)

# A trace that appears (or is replaced) while flowd runs is sent from its first record
# when it is at most this big; a bigger one from its latest, to bound the burst.
FRESH_LIMIT: Final = 256 * 1024

Key = tuple[str, str]  # (root, workflow_id)

NO_TRACE: Final = "no trace.jsonl"
EMPTY: Final = "empty trace"
NO_VALID: Final = "no valid records"


class Entry:
    """One workflow directory under one root."""

    __slots__ = (
        "behind",
        "due",
        "first",
        "gen",
        "ident",
        "interval",
        "key",
        "latest",
        "moving",
        "offset",
        "path",
        "problem",
        "removed",
        "replaced",
        "root",
        "size",
        "skipped",
        "skipping",
        "torn",
        "watch",
        "workflow_id",
    )

    def __init__(self, root: str, workflow_id: str) -> None:
        self.root = root
        self.workflow_id = workflow_id
        self.key: Key = (root, workflow_id)
        self.path = os.path.join(root, workflow_id, TRACE_FILE_NAME)
        self.latest: Line | None = None
        self.offset = 0
        self.ident: FileIdent | None = None  # the file being read (maybe a rotated part now)
        self.first: FileIdent | None = None  # the file this generation began with
        self.size = -1  # the file's size when last read (-1: no file)
        self.gen = 0  # bumped whenever the file is read again from its start
        self.problem: str | None = NO_TRACE
        self.skipped = 0  # malformed lines met in this generation
        self.skipping = False  # inside an over-long line: drop bytes up to its newline
        self.torn = False
        self.replaced = False  # told the file was created, moved or deleted
        self.moving: tuple[int, bool] | None = None  # a move's cookie, ``replaced`` before it
        self.behind = False  # more to read than one refresh reads
        self.removed = False
        # change detection (see watching.py): inotify watch, poll interval and due time
        self.watch = -1
        self.interval = 0.0
        self.due = 0.0

    @property
    def updated(self) -> float:
        return self.latest.updated if self.latest is not None else float("-inf")

    @property
    def position(self) -> Position | None:
        """Where the records read so far end, in the chain of files."""
        return None if self.ident is None else (self.ident, self.offset)

    @property
    def start(self) -> Position | None:
        """Where this generation's records begin."""
        return None if self.first is None else (self.first, 0)

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)


class Root:
    """A trace directory: workflows are its subdirectories."""

    __slots__ = ("due", "entries", "interval", "mtime", "origin", "path", "present", "watch")

    def __init__(self, path: str, origin: str) -> None:
        self.path = path
        self.origin = origin  # "argument", "registry" or "rpc"
        self.entries: dict[str, Entry] = {}
        self.present = False  # the directory exists and has been scanned
        self.mtime = -1  # st_mtime_ns at the last scan (polling)
        self.watch = -1
        self.interval = 0.0
        self.due = 0.0


@dataclass(frozen=True, slots=True)
class Update:
    """Records read from one trace.

    ``reset``: the trace is new, or was read again from its start (truncated, replaced).
    ``complete``: ``lines`` are every record since the last update (or, with ``reset``,
    since the start of the file). Otherwise ``lines`` is only the latest record: of a
    trace ``found`` already written (when flowd starts, or a root is added), whose
    latest record stands for its past; or of a new trace too big to send at once, which
    watchers then read from its start at their own pace.
    """

    entry: Entry
    lines: list[Line]
    reset: bool = False
    complete: bool = True
    found: bool = False


def workflow_names(root: str) -> set[str]:
    """The workflow directories under ``root`` (symlinks are not followed)."""
    with os.scandir(root) as entries:
        return {
            item.name
            for item in entries
            if is_workflow_id(item.name) and item.is_dir(follow_symlinks=False)
        }


class Index:
    def __init__(self) -> None:
        self.roots: dict[str, Root] = {}
        self._by_id: dict[str, dict[str, Entry]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def entries(self) -> Iterator[Entry]:
        for root in list(self.roots.values()):
            yield from list(root.entries.values())

    def get(self, key: Key) -> Entry | None:
        root = self.roots.get(key[0])
        return root.entries.get(key[1]) if root is not None else None

    def resolve(self, workflow_id: str, root: str | None = None) -> Entry | None:
        """The workflow under ``root``, or without one the most recently updated."""
        found = self._by_id.get(workflow_id)
        if not found:
            return None
        if root is not None:
            return found.get(root)
        return max(found.values(), key=lambda entry: (entry.updated, entry.root))

    def add_root(self, path: str, origin: str) -> Root | None:
        """A new root (not scanned yet), or None when ``path`` is one already."""
        if path in self.roots:
            return None
        root = self.roots[path] = Root(path, origin)
        return root

    def remove_root(self, path: str) -> list[Entry]:
        root = self.roots.pop(path, None)
        if root is None:
            return []
        return self.clear_root(root)

    def clear_root(self, root: Root) -> list[Entry]:
        """Forget every workflow of a root (its directory went away)."""
        removed = [self.remove_workflow(root, name) for name in list(root.entries)]
        root.present = False
        return [entry for entry in removed if entry is not None]

    def add_workflow(self, root: Root, name: str) -> Entry | None:
        """A new entry for a workflow directory (None if it is indexed already); ``load``
        reads it."""
        if name in root.entries:
            return None
        entry = root.entries[name] = Entry(root.path, name)
        self._by_id.setdefault(name, {})[root.path] = entry
        self._count += 1
        return entry

    def load(self, entry: Entry, fresh: bool) -> Update:
        """Read a new entry: with ``fresh`` (it appeared while flowd runs) its records from
        the first (in the oldest rotated part, if it was rotated already), else its latest
        record."""
        if not fresh:
            return self._load_latest(entry, found=True) or Update(entry, [], reset=True)
        oldest, total = chain_extent(entry.path)
        if oldest is not None and oldest != _ident_of_path(entry.path):
            if total > FRESH_LIMIT:  # watchers read it from the oldest part at their pace
                update = self._load_latest(entry, found=False)
                entry.first = oldest
                return update or Update(entry, [], reset=True)
            entry.gen += 1
            entry.ident = entry.first = oldest
        update = self.refresh(entry)
        if update is not None and not update.reset:
            update = Update(entry, update.lines, reset=True)
        return update or Update(entry, [], reset=True)

    def remove_workflow(self, root: Root, name: str) -> Entry | None:
        entry = root.entries.pop(name, None)
        if entry is None:
            return None
        entry.removed = True
        roots = self._by_id.get(name)
        if roots is not None:
            roots.pop(root.path, None)
            if not roots:
                del self._by_id[name]
        self._count -= 1
        return entry

    def _load_latest(self, entry: Entry, found: bool) -> Update | None:
        try:
            with open_trace(entry.path) as handle:
                tail = tail_of(handle, 1)
        except OSError as exc:
            self._no_file(entry, exc)
            return None
        entry.gen += 1
        entry.ident = entry.first = tail.ident
        entry.size = tail.size
        entry.offset = tail.end
        entry.latest = tail.lines[-1] if tail.lines else None
        entry.skipped = tail.skipped
        entry.torn = tail.torn
        entry.skipping = False
        entry.problem = _problem(entry)
        return Update(entry, tail.lines, reset=True, complete=False, found=found)

    def _no_file(self, entry: Entry, error: OSError) -> None:
        entry.latest = None
        entry.ident = entry.first = None
        entry.size = -1
        entry.offset = 0
        entry.torn = False
        entry.problem = NO_TRACE if isinstance(error, FileNotFoundError) else _reason(error)

    def refresh(self, entry: Entry) -> Update | None:
        """Read what was appended since the last refresh; None when nothing was."""
        replaced, entry.replaced, entry.behind = entry.replaced, False, False
        rotated: list[Line] = []
        budget = CHUNK
        while entry.ident is not None:  # finish the files rotated away from under us
            current = _ident_of_path(entry.path)
            if current == entry.ident and not replaced:
                break
            reading = entry.ident
            taken = self._follow_rotation(entry, budget)
            if taken is None:
                break  # not rotated (replaced, truncated or gone): the path decides
            replaced = False  # the new trace.jsonl is the next file, not a replacement
            rotated.extend(taken[0])
            budget -= taken[1]
            if entry.ident == reading or budget <= 0:
                # out of budget, or the next file is not there yet (a change wakes us)
                entry.behind = budget <= 0
                entry.problem = _problem(entry)
                return Update(entry, rotated) if rotated else None
        if rotated:  # trace.jsonl at once after (one Update is one file's story)
            entry.behind = True
            entry.problem = _problem(entry)
            return Update(entry, rotated)
        return self._refresh_path(entry, replaced, budget)

    def _follow_rotation(self, entry: Entry, budget: int) -> tuple[list[Line], int] | None:
        """Read on in the rotated part that is the file ``entry`` was reading, up to its
        end (then on to the next newer file); None when it is in no part."""
        assert entry.ident is not None
        try:
            opened = open_part(entry.path, entry.ident)
        except OSError:
            return None
        if opened is None or not opened[1]:
            if opened is not None:
                opened[0].close()
            return None
        handle = opened[0]
        with handle:
            stat = os.fstat(handle.fileno())
            if ident_of(stat) != entry.ident or stat.st_size < entry.offset:
                return None
            if entry.offset > 0:
                handle.seek(entry.offset - 1)
                if handle.read(1) != b"\n":
                    return None  # not the file we read after all
            size = stat.st_size
            data = handle.read(min(budget, size - entry.offset))
        complete = len(data) == size - entry.offset
        lines = self._take(entry, data) or []
        if complete:
            # a rotated part is complete: a rest without a newline is a torn line, skipped
            if entry.offset < size and not entry.skipping:
                entry.skipped += 1
            ident = newer_part(entry.path, entry.ident)  # one consistent look
            if ident is None:
                return lines, len(data)  # the next file is not there yet: try again
            entry.ident, entry.offset, entry.skipping = ident, 0, False
        return lines, max(len(data), 1)

    def _refresh_path(self, entry: Entry, replaced: bool, budget: int = CHUNK) -> Update | None:
        """``refresh`` of the file at the trace's path."""
        try:
            handle = open_trace(entry.path)
        except OSError as exc:
            self._no_file(entry, exc)
            return None
        with handle:
            stat = os.fstat(handle.fileno())
            if (
                not replaced
                and entry.ident is not None
                and ident_of(stat) != entry.ident
                and (find_part(entry.path, entry.ident) or 0) > 0
            ):
                # The trace rotated between refresh's look and this open: the file we
                # were reading is a rotated part now. Follow it; starting again from this
                # new file would drop the rest of the old one.
                handle.close()
                return self.refresh(entry)
            size = entry.size = stat.st_size
            reset = replaced or ident_of(stat) != entry.ident or size < entry.offset
            if not reset and entry.offset > 0 and size > entry.offset:
                handle.seek(entry.offset - 1)
                reset = handle.read(1) != b"\n"  # rewritten in place
            if reset:
                if size > FRESH_LIMIT:
                    return self._load_latest(entry, found=False)
                entry.gen += 1
                entry.ident = entry.first = ident_of(stat)
                entry.offset = entry.skipped = 0
                entry.latest = None
                entry.skipping = False
            if size <= entry.offset:
                entry.torn = False
                entry.problem = _problem(entry)
                return Update(entry, [], reset=True) if reset else None
            handle.seek(entry.offset)
            data = handle.read(min(max(budget, 1), size - entry.offset))
        lines = self._take(entry, data)
        entry.behind = len(data) == budget and size > entry.offset
        entry.torn = size > entry.offset
        entry.problem = _problem(entry)
        if not lines and not reset:
            return None
        return Update(entry, lines or [], reset=reset)

    def _take(self, entry: Entry, data: bytes) -> list[Line] | None:
        """Advance ``entry`` over the complete lines of ``data`` read at its offset."""
        if entry.skipping:
            cut = data.find(b"\n")
            if cut < 0:
                entry.offset += len(data)
                return None
            entry.offset += cut + 1
            data = data[cut + 1 :]
            entry.skipping = False
        found = split_lines(data, entry.offset, entry.ident)
        if found.end == entry.offset and len(data) > MAX_LINE_BYTES:
            entry.offset += len(data)  # a line too long to be a record: skip to its end
            entry.skipping = True
            entry.skipped += 1
            return None
        entry.offset = found.end
        entry.skipped += found.skipped
        if found.lines:
            entry.latest = found.lines[-1]
        return found.lines


def read_to_end(entry: Entry) -> bool:
    """Whether the index has read every complete record of ``entry``'s trace: it is not
    behind, and the file at its path is the one it read, at the size it read (one
    ``stat``: a watcher that polls may not have looked since the writer's last write)."""
    if entry.behind or entry.replaced:
        return False
    try:
        stat = os.stat(entry.path)
    except FileNotFoundError:
        return entry.size < 0  # gone, as the index saw: nothing more will come
    except OSError:
        return False
    return ident_of(stat) == entry.ident and stat.st_size == entry.size


def _ident_of_path(path: str) -> FileIdent | None:
    try:
        return ident_of(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _problem(entry: Entry) -> str | None:
    if entry.latest is not None:
        return None
    return NO_VALID if entry.skipped or entry.torn or entry.skipping else EMPTY


class Liveness:
    """Derived statuses for one answer: each writer process is looked up once."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int | None], bool] = {}

    def status(self, line: Line) -> str:
        """The status to show for ``line``, derived as the core derives it."""
        return derive_status(line.status, line.pid, line.host, line.pid_start, self._alive)

    def _alive(self, pid: int, pid_start: int | None) -> bool:
        key = (pid, pid_start)
        alive = self._known.get(key)
        if alive is None:
            alive = self._known[key] = process_alive(pid, pid_start)
        return alive
