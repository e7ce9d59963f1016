"""A record as flowd keeps it: the bytes it is stored as, and the few fields flowd needs
to index, filter and resume (step, status, run, writer).

flowd hands records out exactly as written, so it keeps each line's bytes. A line is a
record when the core's one parser accepts it (``doeff_flow_core.records``); anything else
is skipped and counted by the reader, never an error.
"""

from __future__ import annotations

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.records import LiveTrace, parse_record
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
        "start",
        "status",
        "step",
        "updated",
    )

    def __init__(
        self, raw: bytes, record: LiveTrace, start: int, end: int, ident: FileId | None = None
    ) -> None:
        self.raw = raw
        self.record: LiveTrace | None = record
        self.ident = ident  # the file it was read from (None: not said)
        self.start = start  # file offset of this line's first byte
        self.end = end  # file offset just after this line's newline
        self.step = record.step
        self.status = record.status
        self.run = record.run
        self.pid = record.pid
        self.host = record.host
        self.pid_start = record.pid_start
        self.updated = record.updated_at.timestamp()


def stored(line: RawLine, ident: FileId | None = None) -> StoredRecord | None:
    """The record on ``line`` (stripped of surrounding whitespace), or None."""
    raw = line.data.strip()
    if not raw or len(raw) > MAX_LINE_BYTES:
        return None
    try:
        return StoredRecord(raw, parse_record(raw), line.start, line.end, ident)
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
