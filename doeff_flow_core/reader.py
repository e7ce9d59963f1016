"""Reading traces: the end of a file without reading the rest, new lines from an offset.

A torn last line (a writer killed mid-write) is skipped, never an error; malformed lines
are counted and skipped so one bad line never hides the rest of a trace.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from stat import S_ISDIR

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME
from doeff_flow_core.records import LiveTrace, parse_record

# Reading backwards, the first block is small (the latest record of most traces lies in
# it) and each further one twice the last, up to MAX_BLOCK.
FIRST_BLOCK = 8 * 1024
BLOCK_SIZE = 64 * 1024  # the size a backward read has grown to by its fourth block
MAX_BLOCK = 1024 * 1024
# Lines longer than this are skipped as malformed; no record written by the core comes close.
MAX_LINE_BYTES = 1024 * 1024
# Why a workflow has no latest record (``WorkflowSummary.problem``; flowd says the same).
NO_TRACE = "no trace.jsonl"
EMPTY_TRACE = "empty trace"
NO_VALID_RECORDS = "no valid records"


@dataclass(frozen=True)
class Tail:
    """The last records of a trace, oldest first, and what was skipped to get them.

    ``end`` is the offset just after the last complete line read (0 if there is none): a
    follower goes on from there with ``read_from``. ``torn`` says a partial line (a writer
    killed mid-write, or a line still being written) lay between ``end`` and where the
    read started. ``end`` does not take part in comparisons: two tails are equal when they
    hold the same records.
    """

    records: tuple[LiveTrace, ...]
    skipped: int = 0
    torn: bool = False
    end: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Chunk:
    """Complete records appended since ``start``; ``offset`` is where to read next."""

    records: tuple[LiveTrace, ...]
    offset: int
    skipped: int = 0
    reset: bool = False  # the file shrank (truncated or replaced): read again from 0


@dataclass(frozen=True)
class WorkflowSummary:
    workflow_id: str
    path: Path
    latest: LiveTrace | None
    problem: str | None = None


class _Records:
    """The records among ``lines``, parsed as they are taken; ``skipped`` counts the
    lines met that are not records (malformed, or longer than MAX_LINE_BYTES)."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self.skipped = 0

    def __iter__(self) -> Iterator[LiveTrace]:
        for raw in self._lines:
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                self.skipped += 1
                continue
            try:
                record = parse_record(raw)
            except MalformedRecord:
                self.skipped += 1
                continue
            yield record


def _parse_lines(lines: list[bytes]) -> tuple[list[LiveTrace], int]:
    parsed = _Records(lines)
    return list(parsed), parsed.skipped


class _Backward:
    """The complete lines before ``end`` in an open file, last first (newlines removed).

    Blocks are read backwards, growing from FIRST_BLOCK to MAX_BLOCK, only as far as the
    caller iterates. What follows the last newline is left out (a torn or unfinished
    line); ``end`` is the offset just after that newline (None until it is found). A line
    that grows past MAX_LINE_BYTES before its start is found is given up and counted in
    ``oversized``, so memory stays bounded by about MAX_LINE_BYTES + MAX_BLOCK.
    """

    def __init__(self, fd: int, end: int) -> None:
        self._fd = fd
        self._position = end
        self._block = FIRST_BLOCK
        self.end: int | None = None
        self.oversized = 0

    def _read(self) -> bytes:
        size = min(self._block, self._position)
        self._position -= size
        self._block = min(self._block * 2, MAX_BLOCK)
        return os.pread(self._fd, size, self._position)

    def __iter__(self) -> Iterator[bytes]:
        head = b""  # the text before a line end found, back to where reading stopped
        seeking = True  # dropping bytes up to the next newline back (torn or too long)
        while self._position > 0:
            block = self._read()
            if seeking:
                cut = block.rfind(b"\n")
                if cut < 0:
                    continue
                if self.end is None:
                    self.end = self._position + cut + 1
                head, seeking = block[:cut], False
            else:
                head = block + head
            stop = len(head)
            cut = head.rfind(b"\n", 0, stop)
            while cut >= 0:
                yield head[cut + 1 : stop]
                stop = cut
                cut = head.rfind(b"\n", 0, stop)
            head = head[:stop]
            if len(head) > MAX_LINE_BYTES:
                self.oversized += 1  # bounded memory: give the line up
                head, seeking = b"", True
        if not seeking:
            yield head  # the file's first line


def read_last(path: str | os.PathLike[str], n: int, end: int | None = None) -> Tail:
    """The last ``n`` valid records in the complete lines before ``end`` (default: the
    file's size now), oldest first.

    Reads backwards from ``end`` and parses from the last line back, stopping once it has
    ``n`` records: the cost depends on ``n`` and the size of the records, not of the file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.fstat(fd)
        if S_ISDIR(stat.st_mode):  # open() refuses a directory; os.open does not
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        return read_fd_last(fd, n, end)
    finally:
        os.close(fd)


def read_fd_last(fd: int, n: int, end: int | None = None) -> Tail:
    """``read_last`` on an open file (a follower's snapshot of the very file it tails)."""
    size = os.fstat(fd).st_size
    limit = size if end is None else max(0, min(end, size))
    lines = _Backward(fd, limit)
    parsed = _Records(lines)
    records = list(islice(parsed, n)) if n > 0 else []
    if n <= 0:
        next(iter(lines), None)  # only where the complete lines end
    records.reverse()
    last = lines.end or 0
    return Tail(tuple(records), parsed.skipped + lines.oversized, last != limit, last)


def rotated_parts(path: str | os.PathLike[str]) -> list[Path]:
    """The rotated parts of a trace, newest first (``trace.jsonl.1``, ``.2`` ...).

    Found by listing the directory, so a gap in the numbering (a writer killed while it
    renamed the parts) hides nothing. A part that is a symbolic link is left out: it
    could lead anywhere.
    """
    trace = Path(path)
    prefix = trace.name + "."
    parts: list[tuple[int, Path]] = []
    try:
        with os.scandir(trace.parent) as entries:
            for entry in entries:
                number = entry.name[len(prefix) :]
                if (
                    entry.name.startswith(prefix)
                    and number.isdigit()
                    and not entry.is_symlink()
                    and number == str(int(number))
                ):
                    parts.append((int(number), Path(entry.path)))
    except OSError:
        return []
    return [part for _, part in sorted(parts)]


def read_history(path: str | os.PathLike[str], n: int) -> Tail:
    """The last ``n`` records of a trace and, when ``trace.jsonl`` holds fewer, of its
    rotated parts (``rotated_parts``), oldest first. ``end`` and ``torn`` are those of
    ``path`` itself; ``skipped`` counts every part read."""
    try:
        newest = read_last(path, n)
    except FileNotFoundError:
        # A writer killed between renaming trace.jsonl to .1 and opening a new one.
        if not rotated_parts(path):
            raise
        newest = Tail(())
    records = list(newest.records)
    skipped = newest.skipped
    parts = rotated_parts(path) if len(records) < n else []
    for part in parts:
        if len(records) >= n:
            break
        try:
            older = read_last(part, n - len(records))
        except FileNotFoundError:
            continue  # rotated away meanwhile
        records[:0] = older.records
        skipped += older.skipped
    return Tail(tuple(records), skipped, newest.torn, newest.end)


def read_latest(path: str | os.PathLike[str]) -> LiveTrace | None:
    tail = read_last(path, 1)
    return tail.records[-1] if tail.records else None


def read_from(path: str | os.PathLike[str], offset: int, limit: int = 8 * 1024 * 1024) -> Chunk:
    """Complete records after ``offset`` (at most about ``limit`` bytes of them)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_fd_from(fd, offset, limit)
    finally:
        os.close(fd)


def read_fd_from(fd: int, offset: int, limit: int = 8 * 1024 * 1024) -> Chunk:
    """``read_from`` on an open file: a follower that keeps the descriptor reads on in a
    file renamed away (a rotated part) with no race against the rename."""
    size = os.fstat(fd).st_size
    reset = size < offset
    start = 0 if reset else offset
    data = os.pread(fd, max(0, min(limit, size - start)), start)
    cut = data.rfind(b"\n")
    if cut < 0:
        if len(data) >= limit:  # one line longer than the limit: skip past it
            return Chunk((), start + len(data), 1, reset)
        return Chunk((), start, 0, reset)
    records, skipped = _parse_lines(data[:cut].split(b"\n"))
    return Chunk(tuple(records), start + cut + 1, skipped, reset)


def read_all(path: str | os.PathLike[str]) -> Tail:
    """Every record of a file; for tests and exports, not for display."""
    with open(path, "rb") as handle:
        data = handle.read()
    torn = bool(data) and not data.endswith(b"\n")
    body = data[: data.rfind(b"\n") + 1] if torn else data
    records, skipped = _parse_lines(body.split(b"\n"))
    return Tail(tuple(records), skipped, torn, len(body))


class RecordStream:
    """Every record of a trace, oldest first: its rotated parts (``rotated_parts``), then
    ``trace.jsonl``, read a block at a time so that memory stays bounded however long the
    trace. ``skipped`` and ``torn`` are known once iteration ends. Raises
    FileNotFoundError when the trace has neither a file nor a rotated part."""

    def __init__(self, path: str | os.PathLike[str], block: int = 4 * MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        self.block = max(block, MAX_LINE_BYTES)  # a smaller block would skip long lines
        self.skipped = 0
        self.torn = False

    def __iter__(self) -> Iterator[LiveTrace]:
        parts = rotated_parts(self.path)
        if not parts and not self.path.exists():
            raise FileNotFoundError(errno.ENOENT, "no trace", str(self.path))
        # Every part is opened before any is read: a rotation meanwhile renames them, and
        # an open file is the same file whatever its name becomes.
        fds: list[int] = []
        try:
            for part in [*reversed(parts), self.path]:
                try:
                    fds.append(os.open(part, os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue  # between a rename and a new file, or rotated away
            for fd in fds:
                offset = 0
                while True:
                    chunk = read_fd_from(fd, offset, self.block)
                    self.skipped += chunk.skipped
                    yield from chunk.records
                    if chunk.offset == offset:
                        break
                    offset = chunk.offset
                self.torn = os.fstat(fd).st_size > offset
        finally:
            for fd in fds:
                os.close(fd)


def follow(
    path: str | os.PathLike[str],
    offset: int = 0,
    poll_interval: float = 0.1,
    stop: Callable[[], bool] | None = None,
) -> Iterator[LiveTrace]:
    """Records appended after ``offset``, as they land; waits for the file to appear."""
    while stop is None or not stop():
        try:
            chunk = read_from(path, offset)
        except FileNotFoundError:
            time.sleep(poll_interval)
            continue
        offset = chunk.offset
        yield from chunk.records
        if not chunk.records:
            time.sleep(poll_interval)


def scan_workflows(trace_dir: str | os.PathLike[str]) -> list[WorkflowSummary]:
    """Every workflow directory under ``trace_dir`` with its latest record, sorted by id.

    A directory whose trace cannot be read is listed with ``problem`` set, so one bad
    trace never hides the others. Symlinked directories are not followed. Each trace
    costs one small read from its end and one parse (``read_last(path, 1)``).
    """
    summaries: list[WorkflowSummary] = []
    with os.scandir(trace_dir) as entries:
        for entry in entries:
            if not is_workflow_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(os.path.join(entry.path, TRACE_FILE_NAME))
            summaries.append(summarize(entry.name, path))
    summaries.sort(key=lambda s: s.workflow_id)
    return summaries


def summarize(workflow_id: str, path: str | os.PathLike[str]) -> WorkflowSummary:
    """One workflow's latest record, or the problem (NO_TRACE, EMPTY_TRACE,
    NO_VALID_RECORDS, or the system's error) that leaves it without one."""
    trace = path if isinstance(path, Path) else Path(path)
    try:
        # Through the rotated parts: a writer killed just after a rotation leaves an
        # empty trace.jsonl, and its latest record in trace.jsonl.1.
        tail = read_history(trace, 1)
    except FileNotFoundError:
        return WorkflowSummary(workflow_id, trace, None, NO_TRACE)
    except OSError as exc:
        return WorkflowSummary(workflow_id, trace, None, exc.strerror or str(exc))
    if not tail.records:
        problem = NO_VALID_RECORDS if tail.skipped or tail.torn else EMPTY_TRACE
        return WorkflowSummary(workflow_id, trace, None, problem)
    return WorkflowSummary(workflow_id, trace, tail.records[-1])
