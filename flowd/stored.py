"""A record as flowd keeps it: the bytes it is stored as, and the few fields flowd needs
to index, filter and resume (step, status, run, writer).

flowd hands records out exactly as written, so it keeps each line's bytes. A line is a
record when the core's one parser accepts it (``doeff_flow_core.records``); anything else
is skipped and counted by the reader, never an error.
"""

from __future__ import annotations

import sys

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.records import RUNNING, LiveTrace, parse_record
from doeff_flow_core.tracefiles.chain import FileId
from doeff_flow_core.tracefiles.lines import MAX_LINE_BYTES, RawLine


class StoredRecord:
    """One record: its stored bytes, where it lies, and the fields flowd indexes.

    ``record`` is the parsed record until the daemon has handed it on (to the span
    exporter); then it is dropped, so the index keeps only bytes.
    """

    __slots__ = (
        "end",
        "host",
        "ident",
        "pid",
        "pid_start",
        "raw",
        "record",
        "run",
        "status",
        "step",
        "updated",
    )

    def __init__(
        self, raw: bytes, record: LiveTrace, end: int, ident: FileId | None = None
    ) -> None:
        self.raw = raw  # the whole line but its newline (JSON allows the odd blank)
        self.record: LiveTrace | None = record
        self.ident = ident  # the file it was read from (None: not said)
        self.end = end  # file offset just after this line's newline
        self.step = record.step
        self.status = sys.intern(record.status)  # a few words, shared by all records
        self.run = record.run
        self.updated = record.updated_at.timestamp()
        # the writer, for a record whose liveness is asked (only a running one's is)
        running = record.status == RUNNING
        self.pid = record.pid if running else None
        self.host = sys.intern(record.host) if running and record.host else None
        self.pid_start = record.pid_start if running else None

    @property
    def start(self) -> int:
        """The file offset of this line's first byte."""
        return self.end - len(self.raw) - 1


def stored(line: RawLine, ident: FileId | None = None) -> StoredRecord | None:
    """The record on ``line``, or None."""
    raw = line.data
    if len(raw) > MAX_LINE_BYTES or not raw.strip():
        return None
    try:
        return StoredRecord(raw, parse_record(raw), line.end, ident)
    except MalformedRecord:
        return None


def resume_from(records: list[StoredRecord], run: str | None, step: int) -> list[StoredRecord]:
    """The records after the last one of ``run`` whose step is at most ``step`` (all of
    them when there is none, so nothing is ever skipped)."""
    for index in range(len(records) - 1, -1, -1):
        if records[index].run == run and records[index].step <= step:
            return records[index + 1 :]
    return records


def parsed(record: StoredRecord) -> LiveTrace | None:
    """The record of a stored line, parsed again (once the index has let go of it)."""
    try:
        return parse_record(record.raw)
    except MalformedRecord:
        return None
