"""Readers: the end of a trace without reading the rest, torn and malformed lines, offsets."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doeff_flow_core import (
    LiveTrace,
    MalformedRecord,
    TraceFrame,
    follow,
    parse_record,
    read_from,
    read_last,
    read_latest,
    scan_workflows,
)
from doeff_flow_core.tracefiles import lines as reader
from doeff_flow_core.tracefiles import reading, scan
from doeff_flow_core.tracefiles.lines import MAX_LINE_BYTES
from doeff_flow_core.tracefiles.reading import Tail, read_all

BLOCK_SIZE = 64 * 1024  # the size a backward read has grown to by its fourth block
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
GARBAGE = [b"not json at all", b"[1, 2, 3]", b'{"status": "running"}', b"{" + b"x" * 50]


def record(step: int, size: int = 0, workflow_id: str = "wf", status: str = "running") -> bytes:
    """One record line; ``size`` pads the effect text so lines can straddle read blocks."""
    effect = f"Get('k{step}')" + "p" * size
    trace = LiveTrace(
        workflow_id=workflow_id, step=step, status=status, current_effect=effect,
        trace=(TraceFrame("main", "/w.py", step),), started_at=T0,
        updated_at=T0 + timedelta(seconds=step), pid=1, host="h", run="r",
    )  # fmt: skip
    return trace.to_json().encode() + b"\n"


def steps(records: tuple[LiveTrace, ...] | list[LiveTrace]) -> list[int]:
    return [r.step for r in records]


def write(path: Path, *chunks: bytes) -> Path:
    path.write_bytes(b"".join(chunks))
    return path


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    whole = record(4)
    path = write(tmp_path / "t.jsonl", record(1), record(2), record(3), whole[: len(whole) // 2])
    tail = read_last(path, 10)
    assert steps(tail.records) == [1, 2, 3]
    assert (tail.torn, tail.skipped) == (True, 0)
    latest = read_latest(path)
    assert latest is not None and latest.step == 3
    assert read_all(path).torn is True
    assert steps(read_all(path).records) == [1, 2, 3]


def test_complete_file_is_not_torn(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2))
    tail = read_last(path, 1)
    assert steps(tail.records) == [2]
    assert (tail.torn, tail.skipped) == (False, 0)


@pytest.mark.parametrize("content", [b"", b"\n\n"], ids=["empty", "blank-lines"])
def test_nothing_to_read(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "t.jsonl", content)
    assert read_last(path, 5) == read_last(path, 5).__class__((), 0, False)
    assert read_latest(path) is None


def test_only_a_torn_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1)[:-5])
    tail = read_last(path, 5)
    assert (tail.records, tail.torn) == ((), True)


def test_malformed_lines_are_counted_not_raised(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        record(1), GARBAGE[0] + b"\n", record(2), b"\n", GARBAGE[1] + b"\n",
        GARBAGE[2] + b"\n", record(3), GARBAGE[3] + b"\n",
    )  # fmt: skip
    tail = read_last(path, 10)
    assert steps(tail.records) == [1, 2, 3]
    assert tail.skipped == 4
    assert tail.torn is False
    chunk = read_from(path, 0)
    assert steps(chunk.records) == [1, 2, 3]
    assert chunk.skipped == 4


def big_records(count: int) -> list[bytes]:
    """``count`` records of ~9 KiB: lines straddle the reader's 64 KiB blocks."""
    return [record(i, 9000 + 37 * i) for i in range(1, count + 1)]


def test_read_last_within_the_last_block(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", *big_records(30))
    assert path.stat().st_size > 4 * BLOCK_SIZE
    for n in (1, 2, 3):  # the last three lines lie whole in the last block
        assert steps(read_last(path, n).records) == list(range(31 - n, 31))


def test_read_last_across_block_boundaries(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", *big_records(30))
    wrong = {}
    for n in [*range(1, 32), 100]:
        tail = read_last(path, n)
        if steps(tail.records) != list(range(1, 31))[-n:] or tail.skipped or tail.torn:
            wrong[n] = (steps(tail.records), tail.skipped, tail.torn)
    assert wrong == {}


def test_lines_longer_than_a_block(tmp_path: Path) -> None:
    big = 3 * BLOCK_SIZE
    path = write(tmp_path / "t.jsonl", record(1), record(2, big), record(3), record(4, big))
    assert steps(read_last(path, 1).records) == [4]
    assert steps(read_last(path, 3).records) == [2, 3, 4]
    assert steps(read_last(path, 9).records) == [1, 2, 3, 4]


def test_torn_line_longer_than_a_block(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2), record(3, 2 * BLOCK_SIZE)[:-10])
    tail = read_last(path, 2)
    assert steps(tail.records) == [1, 2]
    assert tail.torn is True


def test_oversized_line_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2, MAX_LINE_BYTES + 10), record(3))
    assert steps(read_from(path, 0).records) == [1, 3]
    tail = read_last(path, 3)
    assert steps(tail.records) == [1, 3]
    assert tail.skipped == 1


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=70_000),  # a record padded by this much
            st.sampled_from(GARBAGE),
        ),
        max_size=14,
    ),
    torn=st.integers(min_value=0, max_value=80_000),
    n=st.integers(min_value=1, max_value=16),
)
def test_read_last_matches_reading_everything(lines: list[int | bytes], torn: int, n: int) -> None:
    chunks, expected, bad = [], [], 0
    for index, item in enumerate(lines, start=1):
        if isinstance(item, bytes):
            chunks.append(item + b"\n")
            bad += 1
        else:
            chunks.append(record(index, item))
            expected.append(index)
    if torn:
        chunks.append(record(999, torn)[:-2])
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "t.jsonl", *chunks)
        tail = read_last(path, n)
        everything = read_all(path)
    assert steps(tail.records) == expected[-n:]
    assert tail.torn is bool(torn)
    assert steps(everything.records) == expected
    assert everything.skipped == bad
    assert tail.skipped <= bad
    if n > len(expected):  # read back to the start: every bad line was seen
        assert tail.skipped == bad


def test_read_from_is_incremental(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2))
    first = read_from(path, 0)
    assert steps(first.records) == [1, 2]
    assert first.offset == path.stat().st_size
    assert first.reset is False

    third = record(3)
    with path.open("ab") as handle:
        handle.write(third[:20])  # a line being written
    partial = read_from(path, first.offset)
    assert (partial.records, partial.offset) == ((), first.offset)

    with path.open("ab") as handle:
        handle.write(third[20:] + record(4))
    rest = read_from(path, partial.offset)
    assert steps(rest.records) == [3, 4]
    assert rest.offset == path.stat().st_size
    assert steps(read_from(path, rest.offset).records) == []


def test_read_from_resets_on_truncation(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2), record(3))
    offset = read_from(path, 0).offset
    write(path, record(7))  # truncated and rewritten, shorter than before
    chunk = read_from(path, offset)
    assert chunk.reset is True
    assert steps(chunk.records) == [7]
    assert chunk.offset == path.stat().st_size


def test_read_from_in_small_pieces_reads_everything(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", *(record(i, 300 * i) for i in range(1, 11)))
    offset, seen = 0, []
    for _ in range(100):
        chunk = read_from(path, offset, limit=4096)
        seen += steps(chunk.records)
        if chunk.offset == offset:
            break
        offset = chunk.offset
    assert seen == list(range(1, 11))
    assert offset == path.stat().st_size


def test_follow_yields_records_as_they_land(tmp_path: Path) -> None:
    path = tmp_path / "wf" / "trace.jsonl"  # does not exist yet: follow waits for it

    def writer() -> None:
        for i in range(1, 6):
            time.sleep(0.02)
            path.parent.mkdir(exist_ok=True)
            with path.open("ab") as handle:
                handle.write(record(i))

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 10
    got = []
    for rec in follow(path, poll_interval=0.01, stop=lambda: time.monotonic() > deadline):
        got.append(rec.step)
        if len(got) == 5:
            break
    thread.join()
    assert got == [1, 2, 3, 4, 5]


def test_scan_workflows_lists_the_good_beside_the_bad(tmp_path: Path) -> None:
    def trace(name: str, *chunks: bytes) -> None:
        (tmp_path / name).mkdir()
        write(tmp_path / name / "trace.jsonl", *chunks)

    trace("wf-good", record(1, workflow_id="wf-good"), record(2, workflow_id="wf-good"))
    trace("wf-corrupt", b"\x00\xff garbage\n", b"{{{\n")
    trace("wf-empty")
    trace("wf-torn", record(1, workflow_id="wf-torn")[:30])
    (tmp_path / "wf-nofile").mkdir()
    (tmp_path / "wf-done").mkdir()
    write(tmp_path / "wf-done" / "trace.jsonl", record(5, workflow_id="wf-done", status="failed"))
    (tmp_path / "not a workflow").mkdir()
    write(tmp_path / "stray-file", b"x")
    os.symlink(tmp_path / "wf-good", tmp_path / "wf-link")

    found = {s.workflow_id: s for s in scan_workflows(tmp_path)}
    assert list(found) == sorted(found)
    assert set(found) == {"wf-good", "wf-corrupt", "wf-empty", "wf-torn", "wf-nofile", "wf-done"}
    good = found["wf-good"]
    assert good.problem is None and good.latest is not None and good.latest.step == 2
    assert good.path == tmp_path / "wf-good" / "trace.jsonl"
    done = found["wf-done"].latest
    assert done is not None and done.status == "failed"
    assert found["wf-corrupt"].latest is None and found["wf-corrupt"].problem == "no valid records"
    assert found["wf-torn"].problem == "no valid records"
    assert found["wf-empty"].problem == "empty trace"
    assert found["wf-nofile"].problem == "no trace.jsonl"


def test_scan_workflows_survives_an_unreadable_trace(tmp_path: Path) -> None:
    (tmp_path / "wf-a").mkdir()
    write(tmp_path / "wf-a" / "trace.jsonl", record(1, workflow_id="wf-a"))
    (tmp_path / "wf-b" / "trace.jsonl").mkdir(parents=True)  # a directory where a file goes
    found = {s.workflow_id: s for s in scan_workflows(tmp_path)}
    assert found["wf-a"].latest is not None
    assert found["wf-b"].latest is None and found["wf-b"].problem


def test_seed_naive_timestamps_are_accepted(tmp_path: Path) -> None:
    data = json.loads(record(1))
    data["started_at"] = "2024-05-06T07:08:09.123456"
    data["updated_at"] = "2024-05-06T07:08:10"
    for key in ("result", "last_slog", "task", "pid", "host", "run", "trace_exact", "pid_start"):
        del data[key]  # the seed wrote none of these
    parsed = parse_record(json.dumps(data))
    assert parsed.started_at.tzinfo is not None
    assert parsed.updated_at - parsed.started_at == timedelta(microseconds=876544)
    assert (parsed.pid, parsed.run, parsed.trace_exact) == (None, None, True)
    path = write(tmp_path / "t.jsonl", json.dumps(data).encode() + b"\n")
    assert read_last(path, 1).records == (parsed,)


BAD_RECORDS = [
    ("{", "not JSON"),
    ("[]", "expected a JSON object, got list"),
    ('"text"', "expected a JSON object, got str"),
    ("{}", "missing 'status'"),
    ("status:'bogus'", "unknown status 'bogus'"),
    ("step:true", "'step' must be int, got bool"),
    ("step:'3'", "'step' must be int, got str"),
    ("trace:{'a':1}", "'trace' must be a list"),
    ("trace:[1]", "a trace frame must be an object"),
    ("started_at:'yesterday'", "'started_at' is not an ISO-8601 time"),
    ("last_slog:3", "'last_slog' must be an object"),
    ("pid:'1'", "'pid' must be int, got str"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_RECORDS)
def test_parse_record_says_why(change: str, reason: str) -> None:
    if ":" in change and not change.startswith(("{", "[", '"')):
        key, value = change.split(":", 1)
        data = json.loads(record(1))
        data[key] = json.loads(value.replace("'", '"'))
        line = json.dumps(data)
    else:
        line = change
    with pytest.raises(MalformedRecord) as info:
        parse_record(line, line_number=12)
    assert reason in info.value.reason
    assert info.value.line_number == 12
    assert str(info.value).startswith("line 12: malformed trace record: ")


# -- read_last from a fixed end, parsed lazily --------------------------------------------------

KIND = st.one_of(
    st.integers(1, 10**6).map(lambda step: ("record", step)),
    st.sampled_from([("garbage", 0), ("blank", 0), ("long", 0), ("badtype", 0)]),
)


def line_of_kind(kind: str, step: int) -> bytes:
    if kind == "record":
        return record(step)
    if kind == "garbage":
        return b"{not json\n"
    if kind == "long":
        return json.dumps({"pad": "x" * 1500}).encode() + b"\n"
    if kind == "badtype":
        return record(step).replace(b'"step":', b'"step":"seven","was":', 1)
    return b"\n"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(KIND, max_size=30),
    st.sampled_from([b"", b'{"workflow_id": "wf', b"x" * 50]),
    st.integers(1, 40),
)
def test_read_last_with_tiny_blocks_matches_a_naive_reading(
    items: list[tuple[str, int]], torn: bytes, n: int
) -> None:
    body = b"".join(line_of_kind(kind, step) for kind, step in items)
    expected = [step for kind, step in items if kind == "record"][-n:]
    # Tiny blocks and a tiny line limit, so block boundaries and over-long lines are hit.
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        path = write(Path(tmp) / "t.jsonl", body + torn)
        patch.setattr(reader, "FIRST_BLOCK", 16)
        patch.setattr(reader, "MAX_BLOCK", 64)
        patch.setattr(reader, "MAX_LINE_BYTES", 1000)
        tail = read_last(path, n)
    assert steps(tail.records) == expected
    assert tail.end == len(body)
    assert tail.torn == bool(torn)


def test_read_last_stops_at_the_given_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 500)
    head = record(1) + record(2)
    path = write(tmp_path / "t.jsonl", head, json.dumps({"pad": "y" * 2000}).encode() + b"\n")
    with path.open("ab") as handle:
        handle.write(record(3))
    tail = read_last(path, 5)
    assert steps(tail.records) == [1, 2, 3] and tail.skipped == 1
    assert (tail.end, tail.torn) == (path.stat().st_size, False)
    bounded = read_last(path, 5, end=len(head) + 10)  # in the middle of the big line
    assert steps(bounded.records) == [1, 2]
    assert (bounded.end, bounded.torn) == (len(head), True)
    assert read_last(path, 5, end=0) == Tail(())


def test_read_last_parses_only_the_records_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "t.jsonl", *(record(step) for step in range(1, 2001)))
    parsed: list[bytes | str] = []

    def counting(line: bytes | str, line_number: int | None = None) -> LiveTrace:
        parsed.append(line)
        return parse_record(line, line_number)

    monkeypatch.setattr(reading, "parse_record", counting)
    assert steps(read_last(path, 3).records) == [1998, 1999, 2000]
    assert len(parsed) == 3


def test_read_last_finds_the_end_when_asked_for_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", record(1), record(2)[:10])
    tail = read_last(path, 0)
    assert (tail.records, tail.end, tail.torn) == ((), len(record(1)), True)


def test_summarize_says_why_there_is_no_record(tmp_path: Path) -> None:
    for name in ("wf-ok", "wf-missing", "wf-empty", "wf-bad", "wf-dir"):
        (tmp_path / name).mkdir()
    write(tmp_path / "wf-ok" / "trace.jsonl", record(1), record(2))
    write(tmp_path / "wf-empty" / "trace.jsonl", b"")
    write(tmp_path / "wf-bad" / "trace.jsonl", GARBAGE[0] + b"\n")
    (tmp_path / "wf-dir" / "trace.jsonl").mkdir()
    latest = scan.summarize("wf-ok", tmp_path / "wf-ok" / "trace.jsonl").latest
    assert latest is not None and latest.step == 2
    problems = {
        name: scan.summarize(name, tmp_path / name / "trace.jsonl").problem
        for name in ("wf-missing", "wf-empty", "wf-bad", "wf-dir")
    }
    assert problems == {
        "wf-missing": scan.NO_TRACE,
        "wf-empty": scan.EMPTY_TRACE,
        "wf-bad": scan.NO_VALID_RECORDS,
        "wf-dir": "not a regular file (a directory)",
    }
