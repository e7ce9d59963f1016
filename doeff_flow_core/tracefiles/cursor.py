"""Reading a trace's chain: its last lines, a cursor that reads on across rotation, and
where to resume after a line a reader last saw.

A position is a file's identity and an offset in it; renaming keeps both, so a cursor
finds the file it was reading among the parts and, once that file is finished, goes on
to the next newer one. A file that is gone from the chain, has shrunk, or was rewritten
where the cursor stood means the trace was replaced: the cursor says ``reset`` and starts
again from the start of the chain as it is now.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from doeff_flow_core.tracefiles.chain import Chain, FileId, Part, chain_of, file_id, open_part
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME
from doeff_flow_core.tracefiles.lines import (
    CHUNK,
    Backward,
    RawLine,
    is_blank,
    may_have_holes,
    read_forward,
)
from doeff_flow_core.tracefiles.safeopen import Directory

T = TypeVar("T")
Position = tuple[FileId, int]  # a file of the chain and an offset in it
Parse = Callable[[RawLine, FileId], "T | None"]


def open_newest(directory: Directory) -> tuple[int, Part] | None:
    """``trace.jsonl`` opened, or None when there is none."""
    try:
        fd, status = directory.open_status(TRACE_FILE_NAME)
    except FileNotFoundError:
        return None
    return fd, Part(0, file_id(status), status.st_size)


def _open(directory: Directory, ident: FileId) -> tuple[int, Part] | None:
    """The file ``ident``: ``trace.jsonl`` at once when it is that file (one open, no
    listing), else looked for among the rotated parts."""
    newest = open_newest(directory)
    if newest is not None:
        if newest[1].ident == ident:
            return newest
        os.close(newest[0])
    return open_part(directory, ident)


@dataclass(slots=True)
class Cursor:
    """Where a reader stands: after the last complete line it read, in the file
    ``ident`` (None: nowhere yet; the next read starts at the chain's oldest file).
    ``skipping``: it stands inside a line too long to be a record."""

    ident: FileId | None = None
    offset: int = 0
    skipping: bool = False

    @property
    def position(self) -> Position | None:
        return None if self.ident is None else (self.ident, self.offset)

    def move(self, position: Position | None) -> None:
        self.ident, self.offset = (None, 0) if position is None else position
        self.skipping = False


@dataclass(frozen=True)
class Step:
    """What one ``read_on`` found: complete lines in order, with the file each is in."""

    lines: list[tuple[RawLine, FileId]] = field(default_factory=list)
    reset: bool = False  # the lines start a new trace: forget what was read before
    skipped: int = 0  # lines too long, or torn at the end of a finished part
    behind: bool = False  # stopped at the budget with more to read
    newest: Part | None = None  # trace.jsonl when looked at after reading (None: absent)
    problems: tuple[str, ...] = ()


def read_on(
    directory: Directory,
    cursor: Cursor,
    budget: int = CHUNK,
    until: Position | None = None,
    stop_at_reset: bool = False,
) -> Step:
    """The complete lines after ``cursor`` (up to ``until``, if given), across rotated
    parts, reading about ``budget`` bytes; the cursor is moved past them.

    When the cursor's file is gone, has shrunk or was rewritten, the step says ``reset``
    and the cursor starts again at the chain's oldest file: the lines that follow are
    the new trace's (with ``stop_at_reset``, none are read: the caller chooses where to
    start). Lines read before such a change are handed out first, without ``reset``.
    """
    lines: list[tuple[RawLine, FileId]] = []
    skipped = spent = 0
    reset = False
    problems: tuple[str, ...] = ()
    while True:
        if cursor.ident is None:
            chain = chain_of(directory)
            problems = chain.problems
            if chain.oldest is None:
                return Step(lines, reset, skipped, False, None, problems)
            cursor.move((chain.oldest.ident, 0))
        assert cursor.ident is not None
        opened = _open(directory, cursor.ident)
        if opened is None or _replaced(opened, cursor):
            if opened is not None:
                os.close(opened[0])
            if lines:
                break  # hand these out first; the next read says reset
            cursor.move(None)
            reset = True
            if stop_at_reset:
                return Step([], True, 0, False, _newest(directory), chain_of(directory).problems)
            continue
        fd, part = opened
        end = part.size
        if until is not None and until[0] == part.ident:
            end = min(end, until[1])
        try:
            found = read_forward(fd, cursor.offset, end, budget - spent, cursor.skipping)
        finally:
            os.close(fd)
        lines.extend((line, part.ident) for line in found.lines)
        skipped += found.skipped
        spent += found.end - cursor.offset
        progressed = found.end > cursor.offset
        cursor.offset, cursor.skipping = found.end, found.skipping
        if progressed and found.end < end:
            if spent >= budget:
                return Step(lines, reset, skipped, True, _newest(directory), problems)
            continue
        if part.number == 0 or (until is not None and until[0] == part.ident):
            break  # the newest file, or ``until`` reached
        # A rotated part is finished: a rest without a newline is a torn line.
        if cursor.offset < part.size and not cursor.skipping:
            skipped += 1
        newer = chain_of(directory).newer(part.ident)
        if newer is None:
            break  # the next file is not there yet
        cursor.move((newer.ident, 0))
    return Step(lines, reset, skipped, False, _newest(directory), problems)


def _replaced(opened: tuple[int, Part], cursor: Cursor) -> bool:
    """The file has shrunk below the cursor, or holds no newline just before it."""
    fd, part = opened
    if part.size < cursor.offset:
        return True
    return cursor.offset > 0 and not cursor.skipping and os.pread(fd, 1, cursor.offset - 1) != b"\n"


def _newest(directory: Directory) -> Part | None:
    try:
        status = directory.lstat(TRACE_FILE_NAME)
    except OSError:
        return None
    return Part(0, file_id(status), status.st_size)


@dataclass(frozen=True)
class Scan(Generic[T]):
    """The last items of a chain, oldest first. ``end``, ``size`` and ``ident`` are
    those of the newest file read (``end``: just after its last complete line);
    ``skipped`` counts the lines that were not items, in every file read."""

    items: list[T]
    end: int = 0
    size: int = 0
    ident: FileId | None = None
    skipped: int = 0
    exhausted: bool = False  # a scan stopped at its bound before the file's start

    @property
    def torn(self) -> bool:
        return self.size > self.end

    @property
    def position(self) -> Position | None:
        return None if self.ident is None else (self.ident, self.end)


def tail_of_fd(
    fd: int,
    n: int,
    parse: Parse[T],
    end: int | None = None,
    status: os.stat_result | None = None,
) -> Scan[T]:
    """The last ``n`` items of one open file before ``end`` (default: its size);
    ``status``: the file's, when the caller has it."""
    status = status or os.fstat(fd)
    ident = file_id(status)
    limit = status.st_size if end is None else max(0, min(end, status.st_size))
    lines = Backward(fd, limit, holes=may_have_holes(status))
    items: list[T] = []
    skipped = 0
    for line in lines if n > 0 else ():
        if is_blank(line.data):
            continue
        item = parse(line, ident)
        if item is None:
            skipped += 1
            continue
        items.append(item)
        if len(items) >= n:
            break
    if n <= 0:
        next(iter(lines), None)  # only where the complete lines end
    items.reverse()
    last = lines.complete_end or 0
    size = status.st_size if end is None else limit
    return Scan(items, last, size, ident, skipped + lines.oversized, lines.exhausted)


def tail(directory: Directory, n: int, parse: Parse[T], until: Position | None = None) -> Scan[T]:
    """The last ``n`` items of the chain before ``until`` (default: the end of
    ``trace.jsonl``), reading older parts only while fewer were found.
    FileNotFoundError when the chain has no file."""
    if until is None:  # most often trace.jsonl alone holds them: no listing needed
        try:
            fd, status = directory.open_status(TRACE_FILE_NAME)
        except OSError:
            fd = -1  # none, or not a regular file: the chain says why, or has parts
        if fd >= 0:
            try:
                found = tail_of_fd(fd, n, parse, status=status)
            finally:
                os.close(fd)
            if len(found.items) >= n or found.exhausted:
                return found
    chain = chain_of(directory)
    if not chain.parts:
        raise chain.missing(directory.path)
    items: list[T] = []
    skipped = 0
    first: Scan[T] | None = None
    for part in _parts_from(chain, until):
        if first is not None and len(items) >= n:
            break
        opened = open_part(directory, part.ident)
        if opened is None:
            continue  # dropped meanwhile
        fd, _ = opened
        try:
            end = until[1] if until is not None and part.ident == until[0] else None
            found = tail_of_fd(fd, n - len(items), parse, end)
        finally:
            os.close(fd)
        first = first or found
        items[:0] = found.items
        skipped += found.skipped
        if found.exhausted:
            break
    if first is None:
        raise FileNotFoundError(
            errno.ENOENT, "no trace", os.path.join(directory.path, TRACE_FILE_NAME)
        )
    return Scan(items, first.end, first.size, first.ident, skipped, first.exhausted)


def _parts_from(chain: Chain, until: Position | None) -> list[Part]:
    """The parts from that of ``until`` (default: the newest) to the oldest."""
    if until is None:
        return list(chain.parts)
    index = chain.index_of(until[0])
    return list(chain.parts[index or 0 :])


def find_after(
    directory: Directory, accept: Callable[[RawLine], bool], until: Position
) -> Position:
    """Just after the last line ``accept`` takes, before ``until`` or in an older part;
    without one, the start of the oldest part, so nothing is ever skipped."""
    oldest = until
    for part in _parts_from(chain_of(directory), until):
        opened = open_part(directory, part.ident)
        if opened is None:
            continue
        fd, found = opened
        try:
            end = until[1] if part.ident == until[0] else found.size
            for line in Backward(fd, end):
                if not is_blank(line.data) and accept(line):
                    return (part.ident, line.end)
        finally:
            os.close(fd)
        oldest = (part.ident, 0)
    return (oldest[0], 0)


def oldest_position(directory: Directory) -> Position | None:
    chain = chain_of(directory)
    return None if chain.oldest is None else (chain.oldest.ident, 0)
