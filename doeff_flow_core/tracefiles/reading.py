"""Records from trace files: a trace's last ones, all of them in order, and new ones as
they land (every workflow's latest: ``scan``).

A torn last line (a writer killed mid-write) is skipped, never an error; lines that are
not records (malformed, NaN, longer than MAX_LINE_BYTES) are counted and skipped, so one
bad line never hides the rest of a trace. Everything is opened through ``safeopen``: a
workflow directory or file that is a link, a FIFO or a device is reported, never read.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.records import LiveTrace, parse_record
from doeff_flow_core.tracefiles.chain import FileId, chain_of, open_part
from doeff_flow_core.tracefiles.cursor import Cursor, open_newest, read_on, tail, tail_of_fd
from doeff_flow_core.tracefiles.lines import (
    CHUNK,
    MAX_LINE_BYTES,
    RawLine,
    is_blank,
    read_forward,
)
from doeff_flow_core.tracefiles.safeopen import Directory


def parse_line(line: RawLine, ident: FileId | None = None) -> LiveTrace | None:
    """The record on ``line``, or None when it is not one."""
    if len(line.data) > MAX_LINE_BYTES:
        return None
    try:
        return parse_record(line.data)
    except MalformedRecord:
        return None


@dataclass(frozen=True)
class Tail:
    """The last records of a trace, oldest first, and what was skipped to get them.

    ``end`` is the offset just after the last complete line read (0 if there is none).
    ``torn`` says a partial line (a writer killed mid-write, or a line still being
    written) followed it. ``end`` does not take part in comparisons.
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


def open_parent(path: str | os.PathLike[str]) -> Directory:
    """The directory holding the file ``path``: its own parent is followed (the caller's
    choice), the directory itself is not when it is a workflow directory below one."""
    parent = Path(path).parent
    if parent.name in ("", ".", ".."):
        return Directory.open(parent)
    with Directory.open(parent.parent) as grand:
        return grand.subdirectory(parent.name)


def read_last(path: str | os.PathLike[str], n: int, end: int | None = None) -> Tail:
    """The last ``n`` valid records of the file ``path`` before ``end`` (default: its size
    now), oldest first. Reads backwards from ``end`` and stops once it has ``n``: the cost
    depends on ``n`` and the records' size, not the file's."""
    with open_parent(path) as directory:
        fd = directory.open_file(Path(path).name)
    try:
        scan = tail_of_fd(fd, n, parse_line, end)
    finally:
        os.close(fd)
    return Tail(tuple(scan.items), scan.skipped, scan.torn, scan.end)


def read_history(path: str | os.PathLike[str], n: int) -> Tail:
    """The last ``n`` records of a trace and, when ``trace.jsonl`` holds fewer, of its
    rotated parts, oldest first. ``end`` and ``torn`` are those of the newest file read;
    ``skipped`` counts every part read. FileNotFoundError when there is no file."""
    with open_parent(path) as directory:
        scan = tail(directory, n, parse_line)
    return Tail(tuple(scan.items), scan.skipped, scan.torn, scan.end)


def read_latest(path: str | os.PathLike[str]) -> LiveTrace | None:
    found = read_last(path, 1)
    return found.records[-1] if found.records else None


def read_from(path: str | os.PathLike[str], offset: int, limit: int = CHUNK) -> Chunk:
    """Complete records of the file ``path`` after ``offset`` (about ``limit`` bytes)."""
    with open_parent(path) as directory:
        fd = directory.open_file(Path(path).name)
    try:
        size = os.fstat(fd).st_size
        reset = size < offset
        start = 0 if reset else offset
        found = read_forward(fd, start, size, limit)
    finally:
        os.close(fd)
    records, skipped = _parse(found.lines)
    return Chunk(records, found.end, skipped + found.skipped, reset)


def _parse(lines: list[RawLine]) -> tuple[tuple[LiveTrace, ...], int]:
    records: list[LiveTrace] = []
    skipped = 0
    for line in lines:
        if is_blank(line.data):
            continue
        record = parse_line(line)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return tuple(records), skipped


class _FileRecords:
    """Every record of one open file, oldest first, a chunk at a time; ``skipped``,
    ``torn`` and ``end`` (after the last complete line) are known once iteration ends."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.skipped = 0
        self.torn = False
        self.end = 0

    def __iter__(self) -> Iterator[LiveTrace]:
        offset = 0
        skipping = False
        size = os.fstat(self._fd).st_size
        while offset < size:
            found = read_forward(self._fd, offset, size, CHUNK, skipping)
            if found.end == offset:
                break
            records, skipped = _parse(found.lines)
            self.skipped += skipped + found.skipped
            yield from records
            offset, skipping = found.end, found.skipping
        self.torn = offset < size and not skipping
        self.end = offset


def read_all(path: str | os.PathLike[str]) -> Tail:
    """Every record of the file ``path``; for tests and checks, not for display."""
    with open_parent(path) as directory:
        fd = directory.open_file(Path(path).name)
    try:
        found = _FileRecords(fd)
        records = tuple(found)
    finally:
        os.close(fd)
    return Tail(records, found.skipped, found.torn, found.end)


class RecordStream:
    """Every record of a trace, oldest first: its rotated parts, then ``trace.jsonl``,
    read a block at a time so memory stays bounded however long the trace. ``skipped``,
    ``torn`` and ``problems`` are known once iteration ends. FileNotFoundError when the
    trace has no file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.skipped = 0
        self.torn = False
        self.problems: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[LiveTrace]:
        with open_parent(self.path) as directory:
            chain = chain_of(directory)
            self.problems = chain.problems
            if not chain.parts:
                raise chain.missing(directory.path)
            # Every part is opened before any is read: a rotation meanwhile renames them,
            # and an open file is the same file whatever its name becomes.
            fds = [
                opened[0]
                for part in reversed(chain.parts)
                if (opened := open_part(directory, part.ident)) is not None
            ]
        try:
            for fd in fds:
                found = _FileRecords(fd)
                yield from found
                self.skipped += found.skipped
                self.torn = found.torn
        finally:
            for fd in fds:
                os.close(fd)


def follow(
    path: str | os.PathLike[str],
    offset: int = 0,
    poll_interval: float = 0.1,
    stop: Callable[[], bool] | None = None,
) -> Iterator[LiveTrace]:
    """Records appended to the trace ``path`` after ``offset`` in its current file, as
    they land, on across rotation; waits for the file to appear."""
    cursor = Cursor()
    while stop is None or not stop():
        try:
            with open_parent(path) as directory:
                if cursor.ident is None:
                    newest = open_newest(directory)
                    if newest is None:
                        raise FileNotFoundError(errno.ENOENT, "no trace", str(path))
                    os.close(newest[0])
                    cursor.move((newest[1].ident, min(offset, newest[1].size)))
                step = read_on(directory, cursor)
        except FileNotFoundError:
            time.sleep(poll_interval)
            continue
        records, _ = _parse([line for line, _ in step.lines])
        yield from records
        if not step.lines:
            time.sleep(poll_interval)


# A scan with worker processes (``processes`` > 1) uses them only for more workflows than
# this: below, starting them costs more than they save (on two cores, 10,000 traces are
# read sooner here, 40,000 sooner with them).
