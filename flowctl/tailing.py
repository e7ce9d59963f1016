"""Reading the end of a trace file: the last records and the offset where they end.

The core's ``read_last`` reads a trace to its current end and parses every line of
each 64 KiB block. Here the end is fixed by the caller (a size from ``stat``), so a
follower can go on from exactly ``end_offset`` with ``read_from``; and lines are parsed
from the last one backwards, only until ``n`` records are found, so the latest record of
10,000 traces costs one small read and one parse each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from doeff_flow_core import LiveTrace, MalformedRecord, parse_record
from doeff_flow_core.reader import MAX_LINE_BYTES

FIRST_BLOCK = 8 * 1024
MAX_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class TailRead:
    """The last records before ``end_offset``, oldest first.

    ``end_offset`` is just after the last complete line at or before the end that was
    read; ``torn`` says a partial line (a writer killed mid-write, or a line still being
    written) followed it. ``skipped`` counts malformed or over-long lines met on the way.
    """

    records: tuple[LiveTrace, ...]
    end_offset: int
    skipped: int = 0
    torn: bool = False


class _BackwardLines:
    """The complete lines before ``end``, last first, read in growing blocks."""

    def __init__(self, handle: BinaryIO, end: int) -> None:
        self._handle = handle
        self._position = end
        self._block = FIRST_BLOCK
        self.end_offset: int | None = None  # set once the last newline is found
        self.oversized = 0

    def _read_block(self) -> bytes:
        size = min(self._block, self._position)
        self._position -= size
        self._block = min(self._block * 2, MAX_BLOCK)
        self._handle.seek(self._position)
        return self._handle.read(size)

    def __iter__(self) -> Iterator[bytes]:
        # Find the last newline: what follows it is a torn (or unfinished) line.
        buf = b""
        while self.end_offset is None:
            if self._position == 0:
                return
            data = self._read_block()
            cut = data.rfind(b"\n")
            if cut >= 0:
                self.end_offset = self._position + cut + 1
                buf = data[:cut]
        # Invariant: ``buf`` ends at a line end; its first piece may start before it.
        discarding = False
        while True:
            if discarding:
                if self._position == 0:
                    return
                data = self._read_block()
                cut = data.rfind(b"\n")
                if cut < 0:
                    continue
                buf, discarding = data[:cut], False
            if self._position == 0:
                yield from reversed(buf.split(b"\n"))
                return
            first = buf.find(b"\n")
            if first >= 0:
                head = buf[:first]
                yield from reversed(buf[first + 1 :].split(b"\n"))
                buf = head
            if len(buf) > MAX_LINE_BYTES:
                self.oversized += 1
                buf, discarding = b"", True
                continue
            buf = self._read_block() + buf


def read_tail(path: str | os.PathLike[str], n: int, end: int | None = None) -> TailRead:
    """The last ``n`` valid records in the complete lines before ``end`` (default: EOF)."""
    records: list[LiveTrace] = []
    skipped = 0
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        limit = size if end is None else min(end, size)
        lines = _BackwardLines(handle, limit)
        for raw in lines:
            if len(records) >= n:
                break
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                skipped += 1
                continue
            try:
                records.append(parse_record(raw))
            except MalformedRecord:
                skipped += 1
    end_offset = lines.end_offset or 0
    records.reverse()
    return TailRead(tuple(records), end_offset, skipped + lines.oversized, end_offset != limit)
