"""The trace-file library on hostile and awkward files: links, FIFOs, devices, sparse
files, endless lines, gaps in the rotated parts, rotation under a cursor."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doeff_flow_core.errors import NotRegularFile, SymlinkRefused
from doeff_flow_core.protocol import NO_VALID_RECORDS
from doeff_flow_core.records import parse_record
from doeff_flow_core.tracefiles.chain import chain_of
from doeff_flow_core.tracefiles.cursor import Cursor, find_after, read_on, tail
from doeff_flow_core.tracefiles.lines import MAX_LINE_BYTES, Backward, read_forward
from doeff_flow_core.tracefiles.reading import RecordStream, parse_line, read_history, read_last
from doeff_flow_core.tracefiles.safeopen import Directory
from doeff_flow_core.tracefiles.scan import scan_workflows

TIB = 1 << 40


def line(step: int, run: str = "r1", status: str = "running") -> bytes:
    record = {
        "workflow_id": "wf",
        "step": step,
        "status": status,
        "current_effect": f"E({step})",
        "trace": [],
        "started_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:01+00:00",
        "error": None,
        "run": run,
    }
    return json.dumps(record).encode() + b"\n"


@pytest.fixture
def wf(tmp_path: Path) -> Path:
    directory = tmp_path / "traces" / "wf"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened for reading) fails the test instead of hanging."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("a read blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def steps(records: object) -> list[int]:
    return [record.step for record in records]  # type: ignore[attr-defined]


def test_a_symlinked_trace_is_refused_not_followed(wf: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(line(1))
    (wf / "trace.jsonl").symlink_to(secret)
    with pytest.raises(SymlinkRefused):
        read_last(wf / "trace.jsonl", 1)
    summary = scan_workflows(wf.parent)[0]
    assert summary.latest is None
    assert "symbolic link" in (summary.problem or "")


def test_a_symlinked_workflow_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trace.jsonl").write_bytes(line(1))
    root = tmp_path / "traces"
    root.mkdir()
    (root / "wf").symlink_to(elsewhere)
    with pytest.raises(SymlinkRefused):
        read_history(root / "wf" / "trace.jsonl", 5)
    assert scan_workflows(root) == []  # a link is no workflow directory


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_trace_that_is_not_a_regular_file_is_reported_never_read(wf: Path, kind: str) -> None:
    trace = wf / "trace.jsonl"
    if kind == "fifo":
        os.mkfifo(trace)
    elif kind == "directory":
        trace.mkdir()
    else:
        trace.symlink_to("/dev/zero")
    with pytest.raises((NotRegularFile, SymlinkRefused, IsADirectoryError)):
        read_last(trace, 1)
    summary = scan_workflows(wf.parent)[0]
    assert summary.latest is None and summary.problem
    with Directory.open(wf.parent) as root, root.subdirectory("wf") as directory:
        chain = chain_of(directory)
        assert chain.parts == () and chain.problems


def test_a_sparse_terabyte_costs_a_few_reads(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    with open(trace, "wb") as handle:
        handle.write(line(1) + line(2))
        handle.truncate(TIB)
        handle.seek(TIB)
        handle.write(b"\n" + line(3) + line(4))  # a terabyte of zeros, then a newline
    started = time.monotonic()
    found = read_history(trace, 10)
    assert steps(found.records) == [1, 2, 3, 4] and found.skipped == 1
    stream = RecordStream(trace)
    assert steps(list(stream)) == [1, 2, 3, 4] and stream.skipped == 1
    assert time.monotonic() - started < 5
    only_hole = wf.parent / "hole"
    only_hole.mkdir()
    with open(only_hole / "trace.jsonl", "wb") as handle:
        handle.truncate(TIB)
    assert scan_workflows(wf.parent)[0].problem == NO_VALID_RECORDS


def test_lines_longer_than_the_bound_are_skipped_and_counted(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    trace.write_bytes(line(1) + b"x" * (3 * MAX_LINE_BYTES) + b"\n" + line(2))
    found = read_history(trace, 10)
    assert steps(found.records) == [1, 2]
    assert found.skipped == 1
    fd = os.open(trace, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset, skipping, lines, skipped = 0, False, 0, 0
        while offset < size:
            forward = read_forward(fd, offset, size, 64 * 1024, skipping)
            offset, skipping = forward.end, forward.skipping
            lines += len(forward.lines)
            skipped += forward.skipped
        assert (lines, skipped) == (2, 1)
    finally:
        os.close(fd)


def test_a_backward_scan_stops_at_its_bound(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    trace.write_bytes(line(1) + (b"y" * 1000 + b"\n") * 4000)
    fd = os.open(trace, os.O_RDONLY)
    try:
        backward = Backward(fd, os.fstat(fd).st_size, limit=256 * 1024)
        assert sum(1 for _ in backward) < 4000
        assert backward.exhausted
    finally:
        os.close(fd)


def test_nan_is_not_a_record(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    bad = line(2).replace(b'"step": 2', b'"step": 2, "x": NaN')
    trace.write_bytes(line(1) + bad)
    found = read_history(trace, 10)
    assert steps(found.records) == [1] and found.skipped == 1


def test_history_crosses_a_gap_in_the_part_numbers(wf: Path) -> None:
    (wf / "trace.jsonl.3").write_bytes(line(1) + line(2))
    (wf / "trace.jsonl.1").write_bytes(line(3))
    (wf / "trace.jsonl").write_bytes(line(4))
    assert steps(read_history(wf / "trace.jsonl", 10).records) == [1, 2, 3, 4]
    assert steps(list(RecordStream(wf / "trace.jsonl"))) == [1, 2, 3, 4]


def _records(step: object) -> list[int]:
    out = []
    for raw, _ in step.lines:  # type: ignore[attr-defined]
        record = parse_line(raw)
        assert record is not None
        out.append(record.step)
    return out


def test_a_cursor_reads_on_across_rotations_and_loses_nothing(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    trace.write_bytes(line(1) + line(2))
    cursor = Cursor()
    seen: list[int] = []
    with Directory.open(wf) as directory:
        seen += _records(read_on(directory, cursor))
        with open(trace, "ab") as handle:
            handle.write(line(3))
        os.replace(trace, wf / "trace.jsonl.1")  # two rotations between two reads
        trace.write_bytes(line(4))
        os.replace(wf / "trace.jsonl.1", wf / "trace.jsonl.2")
        os.replace(trace, wf / "trace.jsonl.1")
        trace.write_bytes(line(5) + line(6)[:10])  # a line half written
        step = read_on(directory, cursor)
        assert not step.reset
        seen += _records(step)
        with open(trace, "ab") as handle:
            handle.write(line(6)[10:])
        seen += _records(read_on(directory, cursor))
    assert seen == [1, 2, 3, 4, 5, 6]


def test_a_cursor_starts_again_when_the_trace_is_replaced_or_truncated(wf: Path) -> None:
    trace = wf / "trace.jsonl"
    trace.write_bytes(line(1) + line(2))
    cursor = Cursor()
    with Directory.open(wf) as directory:
        assert _records(read_on(directory, cursor)) == [1, 2]
        trace.write_bytes(line(7))  # truncated and rewritten, shorter
        step = read_on(directory, cursor)
        assert step.reset and _records(step) == [7]
        (wf / "new").write_bytes(line(8) + line(9) + line(10))
        os.replace(wf / "new", trace)  # a new file in its place
        step = read_on(directory, cursor)
        assert step.reset and _records(step) == [8, 9, 10]


def test_a_cursor_reads_a_big_trace_in_budgeted_steps(wf: Path) -> None:
    (wf / "trace.jsonl").write_bytes(b"".join(line(step) for step in range(1, 20001)))
    cursor = Cursor()
    seen: list[int] = []
    with Directory.open(wf) as directory:
        step = read_on(directory, cursor, budget=64 * 1024)
        while True:
            seen += _records(step)
            if not step.behind:
                break
            step = read_on(directory, cursor, budget=64 * 1024)
    assert seen == list(range(1, 20001))


def test_find_after_resumes_after_the_last_record_seen(wf: Path) -> None:
    (wf / "trace.jsonl.1").write_bytes(line(1, "a") + line(2, "a"))
    (wf / "trace.jsonl").write_bytes(line(1, "b") + line(2, "b"))
    with Directory.open(wf) as directory:
        end = tail(directory, 1, parse_line).position
        assert end is not None

        def after(run: str, step: int) -> list[int]:
            def accept(raw: object) -> bool:
                record = parse_line(raw)  # type: ignore[arg-type]
                return record is not None and record.run == run and record.step <= step

            cursor = Cursor()
            cursor.move(find_after(directory, accept, end))
            return _records(read_on(directory, cursor))

        assert after("b", 1) == [2]
        assert after("a", 2) == [1, 2]
        assert after("a", 1) == [2, 1, 2]
        assert after("zzz", 1) == [1, 2, 1, 2]  # unknown: everything


def test_parse_record_refuses_infinity() -> None:
    with pytest.raises(ValueError):
        parse_record(line(1).replace(b'"step": 1', b'"step": 1, "x": Infinity'))
