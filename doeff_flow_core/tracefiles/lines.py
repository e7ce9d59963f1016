"""Raw lines of a trace file with their byte offsets, forwards and backwards.

Whatever a file holds, a read costs at most its bound: a line longer than
MAX_LINE_BYTES is given up (and counted) once that many bytes of it have been seen; a
hole in a sparse file (``truncate -s 1T``) is stepped over with ``SEEK_DATA`` rather
than read as zeros; and a backward scan reads at most ``limit`` bytes in all. A line
is complete when its newline is written: what follows the last newline (a torn line,
or one still being written) is never handed out.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# The longest line taken as a record; no record written by the core comes close.
MAX_LINE_BYTES: Final = 1024 * 1024
# Reading backwards, the first block is small (the latest record of most traces lies in
# it) and each further one twice the last, up to MAX_BLOCK.
FIRST_BLOCK: Final = 8 * 1024
MAX_BLOCK: Final = 1024 * 1024
# The most bytes one backward scan reads (more than four full rotated parts' worth of
# records are never needed to show the end of a trace).
SCAN_LIMIT: Final = 256 * 1024 * 1024
# The most bytes one forward read takes (a longer read is taken in several).
CHUNK: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RawLine:
    """One complete line, without its newline, and the offset just after the newline."""

    data: bytes
    end: int

    @property
    def start(self) -> int:
        return self.end - len(self.data) - 1


def is_blank(data: bytes) -> bool:
    """A line of nothing but whitespace (checked without the copy ``strip()`` makes)."""
    return not data or data.isspace()


def may_have_holes(status: os.stat_result) -> bool:
    """Whether a file can be sparse: fewer blocks on disk than its size needs. A dense
    file is read without asking where its holes are (two system calls a read fewer)."""
    return status.st_blocks * 512 < status.st_size


def _next_data(fd: int, position: int, end: int) -> int:
    """The first offset at or after ``position`` that is not in a hole (``end`` when
    there is none before it); ``position`` where holes cannot be asked about."""
    try:
        return min(os.lseek(fd, position, os.SEEK_DATA), end)
    except OSError as exc:
        return end if exc.errno == errno.ENXIO else position


def _data_end_before(fd: int, position: int) -> int:
    """The end of the last data before ``position`` (0 when all before it is a hole),
    found with SEEK_DATA/SEEK_HOLE from further and further back."""
    span = MAX_BLOCK
    while True:
        low = max(0, position - span)
        found = _next_data(fd, low, position)
        if found < position:
            end = found
            for _ in range(64):  # walk the data runs up to ``position``
                try:
                    hole = os.lseek(fd, found, os.SEEK_HOLE)
                except OSError:
                    return position
                end = min(hole, position)
                found = _next_data(fd, hole, position)
                if hole >= position or found >= position:
                    break
            return end
        if low == 0:
            return 0
        span *= 16


class Backward:
    """The complete lines before ``end`` in an open file, last first.

    Blocks are read backwards, growing from FIRST_BLOCK to MAX_BLOCK, only as far as the
    caller iterates. ``complete_end`` is the offset just after the last newline before
    ``end`` (None until found); ``oversized`` counts lines given up for their length;
    ``exhausted`` says the scan stopped at ``limit`` bytes read before the file's start.
    """

    def __init__(self, fd: int, end: int, limit: int = SCAN_LIMIT, holes: bool = True) -> None:
        self._fd = fd
        self._holes = holes  # False: the file is known to be dense
        self._position = end
        self._block = FIRST_BLOCK
        self._budget = limit
        self.complete_end: int | None = None
        self.oversized = 0
        self.exhausted = False

    def _read(self, size: int) -> bytes:
        low = self._position - size
        if self._holes and _next_data(self._fd, low, self._position) >= self._position:
            data = bytes(size)  # a hole: zeros, not read
        else:
            data = os.pread(self._fd, size, low)
            self._budget -= len(data)
        self._position = low
        self._block = min(self._block * 2, MAX_BLOCK)
        return data

    def _skip_hole(self) -> None:
        """When everything just before the position is a hole longer than a line can be,
        jump to the data before it (the line around it is given up anyway)."""
        low = max(0, self._position - MAX_LINE_BYTES)
        if self._holes and _next_data(self._fd, low, self._position) >= self._position:
            self._position = _data_end_before(self._fd, self._position)

    def __iter__(self) -> Iterator[RawLine]:
        head = b""  # the text after a newline found, back to where reading stopped
        head_end = 0  # the offset just after ``head``'s newline
        seeking = True  # dropping bytes up to the next newline back (torn or too long)
        while self._position > 0:
            if self._budget <= 0:
                self.exhausted = True
                return
            if seeking:
                self._skip_hole()
                if self._position == 0:
                    break
            block = self._read(min(self._block, self._position))
            if seeking:
                cut = block.rfind(b"\n")
                if cut < 0:
                    continue
                head_end = self._position + cut + 1
                if self.complete_end is None:
                    self.complete_end = head_end
                head, seeking = block[:cut], False
            else:
                head = block + head
            stop = len(head)
            cut = head.rfind(b"\n", 0, stop)
            while cut >= 0:
                yield RawLine(head[cut + 1 : stop], head_end)
                head_end -= stop - cut
                stop = cut
                cut = head.rfind(b"\n", 0, stop)
            head = head[:stop]
            if len(head) > MAX_LINE_BYTES:
                self.oversized += 1  # bounded memory: give the line up
                head, seeking = b"", True
        if not seeking:
            yield RawLine(head, head_end)  # the file's first line


@dataclass(frozen=True, slots=True)
class Forward:
    """Complete lines read forwards: ``end`` is where to read next; ``skipped`` counts
    lines given up for their length; ``skipping`` says the read stopped inside such a
    line (the next read drops bytes up to its newline)."""

    lines: list[RawLine]
    end: int
    skipped: int = 0
    skipping: bool = False


def read_forward(
    fd: int,
    offset: int,
    end: int,
    budget: int = CHUNK,
    skipping: bool = False,
    holes: bool = True,
) -> Forward:
    """The complete lines between ``offset`` and ``end``, reading about ``budget`` bytes
    (at least one line's worth) of them; ``holes`` False: the file is known dense."""
    position = offset
    skipped = 0
    data_at = _next_data(fd, position, end) if holes else position
    if data_at - position > MAX_LINE_BYTES or (skipping and data_at > position):
        skipped += 0 if skipping else 1  # a hole inside a line: the line is too long
        skipping, position = True, data_at
    want = min(end - position, max(budget, MAX_LINE_BYTES + 1))
    data = os.pread(fd, want, position) if want > 0 else b""
    if skipping:
        cut = data.find(b"\n")
        if cut < 0:
            return Forward([], position + len(data), skipped, True)
        data, position, skipping = data[cut + 1 :], position + cut + 1, False
    cut = data.rfind(b"\n")
    if cut < 0:
        if len(data) > MAX_LINE_BYTES:
            return Forward([], position + len(data), skipped + 1, True)
        return Forward([], position, skipped)
    lines: list[RawLine] = []
    line_end = position
    for piece in data[:cut].split(b"\n"):
        line_end += len(piece) + 1
        lines.append(RawLine(piece, line_end))
    if len(data) - cut - 1 > MAX_LINE_BYTES:
        return Forward(lines, position + len(data), skipped + 1, True)
    return Forward(lines, line_end, skipped)
