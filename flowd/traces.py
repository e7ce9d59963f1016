"""Record lines of trace files, kept as the bytes they are stored as.

flowd hands records out exactly as written, so it keeps each line's bytes (``Line.raw``)
with the few fields it needs to index, filter and resume (step, status, run, writer).
A line is a record when the core's parser accepts it (and it holds no NaN/Infinity,
which are not JSON); anything else is skipped and counted, never an error. A torn last
line (no newline yet) is not read until it is complete.

``split_lines`` is pure; the readers below open files and never read a whole file to
find its end: ``read_tail`` reads backwards in growing blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.reader import MAX_LINE_BYTES
from doeff_flow_core.records import LiveTrace
from flowd.protocol import loads

FIRST_BLOCK: Final = 8 * 1024
MAX_BLOCK: Final = 1024 * 1024
CHUNK: Final = 4 * 1024 * 1024  # most bytes read forward in one call

FileIdent = tuple[int, int]  # (st_dev, st_ino)


class Line:
    """One record: its stored bytes and the fields flowd indexes."""

    __slots__ = (
        "end",
        "host",
        "pid",
        "pid_start",
        "raw",
        "run",
        "start",
        "status",
        "step",
        "updated",
    )

    def __init__(self, raw: bytes, record: LiveTrace, start: int, end: int) -> None:
        self.raw = raw
        self.start = start  # file offset of this line's first byte
        self.end = end  # file offset just after this line's newline
        self.step = record.step
        self.status = record.status
        self.run = record.run
        self.pid = record.pid
        self.host = record.host
        self.pid_start = record.pid_start
        self.updated = record.updated_at.timestamp()


def parse_line(line: bytes, end: int) -> Line | None:
    """The record on the line ending (newline included) at ``end``, stripped of surrounding
    whitespace; None if it is not a record."""
    raw = line.strip()
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        return Line(raw, LiveTrace.from_dict(loads(raw)), end - len(line) - 1, end)
    except (ValueError, RecursionError, MalformedRecord):
        return None


@dataclass(frozen=True)
class Lines:
    """Records found between two offsets; ``end`` is just after the last complete line."""

    lines: list[Line]
    end: int
    skipped: int = 0


def split_lines(data: bytes, base: int) -> Lines:
    """The complete lines of ``data``, which starts at file offset ``base``."""
    cut = data.rfind(b"\n")
    if cut < 0:
        return Lines([], base)
    lines: list[Line] = []
    skipped = 0
    position = base
    for piece in data[:cut].split(b"\n"):
        position += len(piece) + 1
        if not piece.strip():
            continue
        line = parse_line(piece, position)
        if line is None:
            skipped += 1
        else:
            lines.append(line)
    return Lines(lines, base + cut + 1, skipped)


class _Backward:
    """The complete lines before ``end``, last first, each with the offset after it."""

    def __init__(self, handle: BinaryIO, end: int) -> None:
        self._handle = handle
        self._position = end
        self._block = FIRST_BLOCK
        self.end_offset: int | None = None  # after the last complete line
        self.oversized = 0

    def _read(self) -> bytes:
        size = min(self._block, self._position)
        self._position -= size
        self._block = min(self._block * 2, MAX_BLOCK)
        self._handle.seek(self._position)
        return self._handle.read(size)

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        carry = b""  # the end of a line whose start lies in a block not read yet
        carry_end: int | None = None  # offset after carry's newline; None: seek a newline
        while self._position > 0:
            chunk = self._read()
            if carry_end is None:
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    continue
                carry_end = self._position + cut + 1
                if self.end_offset is None:
                    self.end_offset = carry_end
                chunk, carry = chunk[:cut], b""
            pieces = (chunk + carry).split(b"\n")
            ends = [carry_end]
            for piece in reversed(pieces[1:]):
                ends.append(ends[-1] - len(piece) - 1)
            # ends[i] is the end of pieces[-1 - i]; ends[-1] that of pieces[0]
            for index in range(len(pieces) - 1, 0, -1):
                yield pieces[index], ends[len(pieces) - 1 - index]
            carry, carry_end = pieces[0], ends[-1]
            if len(carry) > MAX_LINE_BYTES:
                self.oversized += 1  # bounded memory: give the line up
                carry, carry_end = b"", None
        if carry_end is not None:
            yield carry, carry_end


@dataclass(frozen=True)
class Tail:
    """The last records of a file (oldest first) and what the file looked like."""

    lines: list[Line]
    end: int  # just after the last complete line (0 if there is none)
    size: int
    ident: FileIdent
    skipped: int = 0

    @property
    def torn(self) -> bool:
        return self.size > self.end


def ident_of(stat: os.stat_result) -> FileIdent:
    return (stat.st_dev, stat.st_ino)


def read_tail(path: str, n: int, end: int | None = None) -> Tail:
    """The last ``n`` records before ``end`` (default: the end of the file)."""
    with open(path, "rb") as handle:
        return tail_of(handle, n, end)


def tail_of(handle: BinaryIO, n: int, end: int | None = None) -> Tail:
    """``read_tail`` on a file already open."""
    stat = os.fstat(handle.fileno())
    limit = stat.st_size if end is None else min(end, stat.st_size)
    backward = _Backward(handle, limit)
    found: list[Line] = []
    skipped = 0
    for raw, line_end in backward if n > 0 else ():
        if not raw.strip():
            continue
        line = parse_line(raw, line_end)
        if line is None:
            skipped += 1
            continue
        found.append(line)
        if len(found) >= n:
            break
    found.reverse()
    last = backward.end_offset or 0
    return Tail(found, last, stat.st_size, ident_of(stat), skipped + backward.oversized)


def resume_offset(path: str, run: str | None, step: int, end: int) -> int:
    """Where to resume after the record (``run``, ``step``) that a client last saw.

    The offset just after the last record of that run whose step is at most ``step``;
    0 (everything) when the file holds no such record, so nothing is ever skipped.
    """
    with open(path, "rb") as handle:
        for raw, line_end in _Backward(handle, end):
            if not raw.strip():
                continue
            line = parse_line(raw, line_end)
            if line is not None and line.run == run and line.step <= step:
                return line_end
    return 0


def resume_from(lines: list[Line], run: str | None, step: int) -> list[Line]:
    """``resume_offset`` over records in memory."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].run == run and lines[index].step <= step:
            return lines[index + 1 :]
    return lines


def read_range(
    path: str, start: int, end: int, ident: FileIdent | None, limit: int = CHUNK
) -> Lines | None:
    """Records between ``start`` and ``end``, reading about ``limit`` bytes (more when one
    line is longer, up to CHUNK); None when the file at ``path`` is no longer the one
    identified by ``ident``, or has shrunk."""
    with open(path, "rb") as handle:
        if ident is not None and ident_of(os.fstat(handle.fileno())) != ident:
            return None
        while True:
            want = min(limit, end - start)
            handle.seek(start)
            data = handle.read(want)
            if len(data) < want:
                return None
            found = split_lines(data, start)
            if found.end > start or want == 0:
                return found
            if want >= min(CHUNK, end - start):
                return Lines([], start + want, 1)  # no newline in a whole chunk: skip it
            limit = min(CHUNK, limit * 4)
