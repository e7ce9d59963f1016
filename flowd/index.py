"""The index: every workflow under every root, keyed by (root, workflow_id).

Each entry keeps its latest record (as stored) and a cursor (the core's
``tracefiles.cursor``): where the records read so far end, in the chain of the trace's
files. Reading is split in two so that no file can stall the daemon: ``read_job`` does
the I/O (in a worker thread, a bounded amount per call: a chunk forwards, a bounded scan
backwards, holes stepped over) and returns a ``Read``; ``Index.apply`` then changes the
entry, on the event loop, and says what was new (an ``Update``). The cursor notices a
truncated or replaced file (a new *generation*, read from its start), follows rotated
parts by their identity (nothing lost or repeated), leaves a torn last line until it
ends and skips over-long lines.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Final

from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.liveness import derive_status, process_alive
from doeff_flow_core.protocol import EMPTY_TRACE, NO_TRACE, NO_VALID_RECORDS
from doeff_flow_core.tracefiles.chain import FileId, Part, chain_of
from doeff_flow_core.tracefiles.cursor import (
    Cursor,
    Position,
    Scan,
    find_after,
    oldest_position,
    read_on,
    tail,
)
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME
from doeff_flow_core.tracefiles.lines import CHUNK, RawLine
from doeff_flow_core.tracefiles.safeopen import Directory
from doeff_flow_core.tracefiles.scan import id_problem
from flowd.stored import StoredRecord, stored

# A trace that appears (or is replaced) while flowd runs is sent from its first record
# when it is at most this big; a bigger one from its latest, to bound the burst.
FRESH_LIMIT: Final = 256 * 1024

Key = tuple[str, str]  # (root, workflow_id)


class Tracking:
    """How the daemon notices changes to a root or workflow (see watching.py): its
    inotify watch, its poll interval and due time, and what inotify said."""

    __slots__ = ("changed", "due", "interval", "moving", "owner", "replaced", "watch")

    def __init__(self, owner: Root | Entry | None) -> None:
        self.owner = owner
        self.watch = -1
        self.interval = 0.0
        self.due = INF  # not scheduled
        self.changed = 0.0  # monotonic time of the last change seen
        self.replaced = False  # told the trace file was created, moved or deleted
        self.moving: tuple[int, bool] | None = None  # a move's cookie, ``replaced`` before it

    @property
    def idle(self) -> bool:
        """Nothing to remember: no watch, no poll due, nothing heard of."""
        return self.watch < 0 and self.due == INF and not self.replaced and self.moving is None


class _Untracked(Tracking):
    """The state every idle workflow shares (most of 100,000): no watch, no poll due,
    nothing heard. Read-only: ``Entry.tracked()`` gives an entry a state of its own."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, name, None) != value:
            raise AttributeError(f"an untracked workflow's {name} is read-only")


INF: Final = float("inf")
UNTRACKED: Final = _Untracked.__new__(_Untracked)
for _name, _value in (
    ("owner", None),
    ("watch", -1),
    ("interval", 0.0),
    ("due", INF),
    ("changed", 0.0),
    ("replaced", False),
    ("moving", None),
):
    object.__setattr__(UNTRACKED, _name, _value)


class Entry:
    """One workflow directory under one root: what the index knows of its trace."""

    __slots__ = (
        "behind",
        "cursor",
        "first",
        "gen",
        "latest",
        "newest_ident",
        "newest_size",
        "problem",
        "reading",
        "removed",
        "root",
        "skipped",
        "torn",
        "track",
        "workflow_id",
    )

    def __init__(self, root: str, workflow_id: str) -> None:
        self.root = root
        self.workflow_id = workflow_id
        self.latest: StoredRecord | None = None
        self.cursor = Cursor()
        self.first: FileId | None = None  # the file this generation began with
        # trace.jsonl as last read (no file: None, -1); two fields, not a Part: 100,000 of them
        self.newest_ident: FileId | None = None
        self.newest_size = -1
        self.gen = 0  # bumped whenever the trace is read again from its start
        self.problem: str | None = NO_TRACE
        self.skipped = 0  # malformed lines met in this generation
        self.torn = False
        self.behind = False  # more to read than one read takes
        self.removed = False
        self.reading = False  # a read is in flight
        self.track: Tracking = UNTRACKED  # its own once it is watched or polled

    def tracked(self) -> Tracking:
        """Its change-watch state, made its own if it had none."""
        if self.track is UNTRACKED:
            self.track = Tracking(self)
        return self.track

    def untrack(self) -> None:
        """Give the state back once there is nothing in it (memory, at 100,000)."""
        if self.track is not UNTRACKED and self.track.idle:
            self.track = UNTRACKED

    @property
    def newest(self) -> Part | None:
        """``trace.jsonl`` as last read (None: there was none)."""
        if self.newest_ident is None:
            return None
        return Part(0, self.newest_ident, self.newest_size)

    @newest.setter
    def newest(self, part: Part | None) -> None:
        if part is None:
            self.newest_ident, self.newest_size = None, -1
        else:  # one identity tuple for the file, however many hold it
            same = part.ident == self.cursor.ident
            self.newest_ident = self.cursor.ident if same else part.ident
            self.newest_size = part.size

    @property
    def key(self) -> Key:
        return (self.root, self.workflow_id)

    @property
    def path(self) -> str:
        # the id was checked when the entry was made (a directory name that is one)
        return os.path.join(self.root, self.workflow_id, TRACE_FILE_NAME)

    def __str__(self) -> str:
        return self.path

    @property
    def updated(self) -> float:
        return self.latest.updated if self.latest is not None else float("-inf")

    @property
    def position(self) -> Position | None:
        """Where the records read so far end, in the chain of files."""
        return self.cursor.position

    @property
    def start(self) -> Position | None:
        """Where this generation's records begin."""
        return None if self.first is None else (self.first, 0)

    @property
    def directory(self) -> str:
        return os.path.join(self.root, self.workflow_id)


class Root:
    """A trace directory: workflows are its subdirectories."""

    __slots__ = ("entries", "mtime", "origin", "path", "present", "sweep", "track")

    def __init__(self, path: str, origin: str) -> None:
        self.path = path
        self.origin = origin  # "argument", "registry" or "rpc"
        self.entries: dict[str, Entry] = {}
        self.present = False  # the directory exists and has been scanned
        self.mtime = -1  # st_mtime_ns at the last scan (polling)
        self.sweep: Iterator[str] | None = None  # idle workflows still to look at, in turn
        self.track = Tracking(self)


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
    lines: list[StoredRecord]
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


# -- reading (any thread) -------------------------------------------------------------

LATEST: Final = "latest"  # the latest record only (a trace found when flowd starts)
FRESH: Final = "fresh"  # every record from the first (a trace that appeared)
FOLLOW: Final = "follow"  # what was appended since the cursor


@dataclass(frozen=True, slots=True)
class Job:
    """One read to do: where, how, from which cursor (a copy: the entry's own is only
    changed when the read is applied)."""

    root: str
    workflow_id: str
    mode: str
    cursor: Cursor
    replaced: bool = False
    budget: int = CHUNK


@dataclass(frozen=True, slots=True)
class Read:
    """What a job found; ``error`` when the trace could not be read at all."""

    job: Job
    cursor: Cursor = field(default_factory=Cursor)
    lines: list[StoredRecord] = field(default_factory=list)
    reset: bool = False
    complete: bool = True
    found: bool = False
    first: FileId | None = None
    newest: Part | None = None
    skipped: int = 0
    behind: bool = False
    problem: str | None = None
    error: OSError | None = None


def job_for(entry: Entry, mode: str) -> Job:
    track = entry.track
    return Job(entry.root, entry.workflow_id, mode, replace(entry.cursor), track.replaced)


def read_job(job: Job, root: Directory | None = None) -> Read:
    """Do one job (blocking, bounded): never raises for a file's sake. ``root``: its
    root, open already (a batch of jobs opens each root once)."""
    try:
        if root is None:
            with _workflow(job.root, job.workflow_id) as directory:
                return _read(directory, job)
        with root.subdirectory(job.workflow_id) as directory:
            return _read(directory, job)
    except OSError as exc:
        return Read(job, error=exc)


def _read(directory: Directory, job: Job) -> Read:
    cursor = job.cursor
    if job.mode == LATEST:
        return _latest(directory, job, found=True)
    if job.mode == FRESH or job.replaced or cursor.ident is None:
        cursor.move(None)
        return _from_start(directory, job)
    step = read_on(directory, cursor, job.budget, stop_at_reset=True)
    if step.reset:
        return _from_start(directory, job)
    lines = _stored(step.lines)
    return Read(
        job,
        cursor,
        lines,
        newest=step.newest,
        skipped=step.skipped + len(step.lines) - len(lines) - _blank(step.lines),
        behind=step.behind,
        problem=_first(step.problems),
    )


def _from_start(directory: Directory, job: Job) -> Read:
    """A new generation: every record from the oldest part, or only the latest record
    when there is too much to send at once."""
    chain = chain_of(directory)
    if chain.oldest is None:
        return Read(job, error=chain.missing(directory.path))
    if chain.size > FRESH_LIMIT:
        found = _latest(directory, job, found=False)
        return replace(found, first=chain.oldest.ident)
    cursor = Cursor(chain.oldest.ident, 0)
    step = read_on(directory, cursor, job.budget)
    lines = _stored(step.lines)
    skipped = step.skipped + len(step.lines) - len(lines) - _blank(step.lines)
    return Read(
        job,
        cursor,
        lines,
        reset=True,
        first=chain.oldest.ident,
        newest=step.newest,
        skipped=skipped,
        behind=step.behind,
        problem=_first(step.problems),
    )


def _latest(directory: Directory, job: Job, found: bool) -> Read:
    scan = tail(directory, 1, stored)
    cursor = Cursor()
    cursor.move(scan.position)
    newest = None
    if scan.ident is not None and scan.position is not None:
        try:
            status = directory.lstat(TRACE_FILE_NAME)
        except FileNotFoundError:
            pass
        else:  # one identity tuple for the file, however many hold it
            ident = (status.st_dev, status.st_ino)
            newest = Part(0, scan.ident if ident == scan.ident else ident, status.st_size)
    return Read(
        job,
        cursor,
        scan.items,
        reset=True,
        complete=False,
        found=found,
        first=scan.ident,
        newest=newest,
        skipped=scan.skipped,
    )


def _stored(lines: list[tuple[RawLine, FileId]]) -> list[StoredRecord]:
    found = []
    for line, ident in lines:
        record = stored(line, ident)
        if record is not None:
            found.append(record)
    return found


def _blank(lines: list[tuple[RawLine, FileId]]) -> int:
    return sum(1 for line, _ in lines if not line.data.strip())


def _first(problems: tuple[str, ...]) -> str | None:
    return problems[0] if problems else None


def _workflow(root: str, workflow_id: str) -> Directory:
    with Directory.open(root) as opened:
        return opened.subdirectory(workflow_id)


def read_range(
    root: str, workflow_id: str, position: Position, until: Position, budget: int
) -> tuple[list[StoredRecord], Position] | None:
    """Records from ``position`` toward ``until`` along the chain, about ``budget`` bytes
    of them, and where they end; None when the file of ``position`` is no longer in the
    chain, or changed (a watcher's pump reads at its client's pace with this)."""
    try:
        with _workflow(root, workflow_id) as directory:
            cursor = Cursor()
            cursor.move(position)
            step = read_on(directory, cursor, budget, until=until, stop_at_reset=True)
    except OSError:
        return None
    if step.reset or cursor.position is None:
        return None
    return _stored(step.lines), cursor.position


def resume_position(
    root: str, workflow_id: str, run: str | None, step: int, until: Position
) -> Position:
    """Just after the last record of ``run`` whose step is at most ``step``, before
    ``until`` or in an older part; without one, the start of the oldest part."""

    def seen(line: RawLine) -> bool:
        record = stored(line)
        return record is not None and record.run == run and record.step <= step

    with _workflow(root, workflow_id) as directory:
        return find_after(directory, seen, until)


def oldest(root: str, workflow_id: str) -> Position | None:
    """The start of the chain's oldest file now."""
    try:
        with _workflow(root, workflow_id) as directory:
            return oldest_position(directory)
    except OSError:
        return None


def history(root: str, workflow_id: str, n: int, until: Position | None) -> Scan[StoredRecord]:
    """The last ``n`` records before ``until`` (FileNotFoundError: no trace)."""
    with _workflow(root, workflow_id) as directory:
        return tail(directory, n, stored, until)


# -- the index (event loop) -----------------------------------------------------------


class Index:
    def __init__(self) -> None:
        self.roots: dict[str, Root] = {}
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
        found = self._found(workflow_id)
        if root is not None:
            return next((entry for entry in found if entry.root == root), None)
        if len(found) == 1:
            return found[0]
        return max(found, key=lambda entry: (entry.updated, entry.root), default=None)

    def _found(self, workflow_id: str) -> list[Entry]:
        """The workflow's entries, one per root it is under (a few roots: looked up in
        each, no index of ids kept)."""
        found = []
        for root in self.roots.values():
            entry = root.entries.get(workflow_id)
            if entry is not None:
                found.append(entry)
        return found

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
        """A new entry for a workflow directory (None if it is indexed already); a read
        of it (``job_for``, ``read_job``, ``apply``) fills it in."""
        if name in root.entries:
            return None
        entry = root.entries[name] = Entry(root.path, name)
        self._count += 1
        return entry

    def remove_workflow(self, root: Root, name: str) -> Entry | None:
        entry = root.entries.pop(name, None)
        if entry is None:
            return None
        entry.removed = True
        self._count -= 1
        return entry

    def read_now(self, entry: Entry, mode: str = FOLLOW) -> Update | None:
        """Read and apply at once, blocking (for tools and tests; the daemon reads in
        worker threads)."""
        return self.apply(entry, read_job(job_for(entry, mode)))

    def apply(self, entry: Entry, read: Read) -> Update | None:
        """Take a read into its entry; what was new, or None when nothing was."""
        if read.job.replaced and entry.track.replaced:
            entry.track.replaced = False
        if read.error is not None:
            return self._unreadable(entry, read.error)
        entry.cursor = read.cursor
        entry.newest = read.newest
        entry.behind = read.behind
        if read.reset:
            entry.gen += 1
            first = read.first
            entry.first = entry.cursor.ident if first == entry.cursor.ident else first
            entry.skipped = 0
            entry.latest = None
        entry.skipped += read.skipped
        if read.lines:
            latest = entry.latest = read.lines[-1]
            # the same offset, held once (ints are objects: 100,000 of each add up)
            if entry.cursor.offset == latest.end:
                entry.cursor.offset = latest.end
            if entry.newest_size == latest.end:
                entry.newest_size = latest.end
        entry.torn = _torn(entry)
        entry.problem = _problem(entry, read.problem)
        if not read.lines and not read.reset:
            return None
        return Update(entry, read.lines, read.reset, read.complete, read.found)

    def _unreadable(self, entry: Entry, error: OSError) -> Update | None:
        entry.latest = None
        entry.cursor = Cursor()
        entry.first = entry.newest = None
        entry.torn = False
        entry.problem = NO_TRACE if isinstance(error, FileNotFoundError) else _reason(error)
        return None


def _torn(entry: Entry) -> bool:
    newest = entry.newest
    return (
        newest is not None
        and entry.cursor.ident == newest.ident
        and newest.size > entry.cursor.offset
        and not entry.cursor.skipping
    )


def read_to_end(entry: Entry) -> bool:
    """Whether the index has read every complete record of ``entry``'s trace: it is not
    behind, and the file at its path is the one it read, at the size it read (one
    ``lstat``: a watcher that polls may not have looked since the writer's last write)."""
    if entry.behind or entry.track.replaced:
        return False
    try:
        status = os.lstat(entry.path)
    except FileNotFoundError:
        return entry.newest is None  # gone, as the index saw: nothing more will come
    except OSError:
        return False
    newest = entry.newest
    return (
        newest is not None
        and st.S_ISREG(status.st_mode)
        and (status.st_dev, status.st_ino) == newest.ident
        and status.st_size == newest.size
    )


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _problem(entry: Entry, refused: str | None) -> str | None:
    if entry.latest is not None:  # a record naming another workflow is said, as files say it
        record = entry.latest.record  # held until handed on: the problem was set while it was
        return entry.problem if record is None else id_problem(entry.workflow_id, record)
    if refused is not None and entry.cursor.ident is None:
        return refused
    return NO_VALID_RECORDS if entry.skipped or entry.torn or entry.cursor.skipping else EMPTY_TRACE


class Liveness:
    """Derived statuses for one answer: each writer process is looked up once."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int | None], bool] = {}

    def status(self, line: StoredRecord) -> str:
        """The status to show for ``line``, derived as the core derives it."""
        return derive_status(line.status, line.pid, line.host, line.pid_start, self._alive)

    def _alive(self, pid: int, pid_start: int | None) -> bool:
        key = (pid, pid_start)
        alive = self._known.get(key)
        if alive is None:
            alive = self._known[key] = process_alive(pid, pid_start)
        return alive
