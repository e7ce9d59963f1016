"""Reading traces: the end of a file without reading the rest, new lines from an offset.

A torn last line (a writer killed mid-write) is skipped, never an error; malformed lines
are counted and skipped so one bad line never hides the rest of a trace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME
from doeff_flow_core.records import LiveTrace, parse_record

BLOCK_SIZE = 64 * 1024
# Lines longer than this are skipped as malformed; no record written by the core comes close.
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Tail:
    """The last records of a trace, oldest first, and what was skipped to get them."""

    records: tuple[LiveTrace, ...]
    skipped: int = 0
    torn: bool = False


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


def _parse_lines(lines: list[bytes]) -> tuple[list[LiveTrace], int]:
    records: list[LiveTrace] = []
    skipped = 0
    for raw in lines:
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            skipped += 1
            continue
        try:
            records.append(parse_record(raw))
        except MalformedRecord:
            skipped += 1
    return records, skipped


def read_last(path: str | os.PathLike[str], n: int) -> Tail:
    """The last ``n`` valid records, reading backwards from the end in blocks."""
    records: list[LiveTrace] = []
    skipped = 0
    torn = False
    # Drop bytes after the last newline seen: a torn last line, or the rest of a line
    # too long to keep.
    drop_tail = True
    carry = b""  # a line whose start lies in an earlier block, with its newline
    with open(path, "rb") as handle:
        position = end = handle.seek(0, os.SEEK_END)
        while position > 0 and len(records) < n:
            size = min(BLOCK_SIZE, position)
            position -= size
            handle.seek(position)
            data = handle.read(size) + carry
            carry = b""
            if position + size == end:
                torn = not data.endswith(b"\n")
            if drop_tail:
                cut = data.rfind(b"\n")
                if cut < 0:
                    continue
                data = data[: cut + 1]
                drop_tail = False
            lines = data.split(b"\n")
            lines.pop()  # data ends with a newline: the last piece is empty
            if position > 0:
                first = lines.pop(0)
                if len(first) > MAX_LINE_BYTES:
                    skipped += 1  # bounded memory: give the line up, skip its start
                    drop_tail = True
                else:
                    carry = first + b"\n"
            parsed, bad = _parse_lines(lines)
            records[:0] = parsed
            skipped += bad
    return Tail(tuple(records[-n:]) if n > 0 else (), skipped, torn)


def read_latest(path: str | os.PathLike[str]) -> LiveTrace | None:
    tail = read_last(path, 1)
    return tail.records[-1] if tail.records else None


def read_from(path: str | os.PathLike[str], offset: int, limit: int = 8 * 1024 * 1024) -> Chunk:
    """Complete records after ``offset`` (at most about ``limit`` bytes of them)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        reset = size < offset
        start = 0 if reset else offset
        handle.seek(start)
        data = handle.read(min(limit, size - start))
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
    return Tail(tuple(records), skipped, torn)


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


def file_size(path: str | os.PathLike[str]) -> int:
    return os.stat(path).st_size


def scan_workflows(trace_dir: str | os.PathLike[str]) -> list[WorkflowSummary]:
    """Every workflow directory under ``trace_dir`` with its latest record, sorted by id.

    A directory whose trace cannot be read is listed with ``problem`` set, so one bad
    trace never hides the others. Symlinked directories are not followed.
    """
    root = Path(trace_dir)
    summaries: list[WorkflowSummary] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not is_workflow_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path) / TRACE_FILE_NAME
            summaries.append(_summarize(entry.name, path))
    summaries.sort(key=lambda s: s.workflow_id)
    return summaries


def _summarize(workflow_id: str, path: Path) -> WorkflowSummary:
    try:
        tail = read_last(path, 1)
    except FileNotFoundError:
        return WorkflowSummary(workflow_id, path, None, "no trace.jsonl")
    except OSError as exc:
        return WorkflowSummary(workflow_id, path, None, exc.strerror or str(exc))
    if not tail.records:
        problem = "no valid records" if tail.skipped or tail.torn else "empty trace"
        return WorkflowSummary(workflow_id, path, None, problem)
    return WorkflowSummary(workflow_id, path, tail.records[-1])
