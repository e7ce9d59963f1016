"""The span feed, without a daemon: runs read from their start, runs found mid-way and
rebuilt, runs whose writer is gone swept; bounded waiting."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from doeff_flow_core.records import LOST, LiveTrace
from doeff_flow_core.timeline.spans import INCOMPLETE, OK, WORKFLOW, Span, SpanBuilder, spans_of
from doeff_flow_core.tracefiles.reading import RecordStream
from flowd.index import LATEST, Entry, Update
from flowd.otlp import feed as span_feed
from flowd.otlp.feed import Replay, SpanFeed, rebuild
from flowd.stored import StoredRecord
from tests.support.otlp import dead_pid, indexed, run, trace_dir, written_by

# -- the span feed, without a daemon --------------------------------------------------------


class Fed:
    """A SpanFeed with its emitted spans and rebuild requests kept."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.replays: list[Replay] = []
        self.feed = SpanFeed(self.spans.extend, self.replays.append)


def trace_lines(trace_dir: Path, workflow_id: str) -> tuple[Entry, list[StoredRecord]]:
    """The workflow's entry, read to its end by an index, and its records."""
    _, entry, update = indexed(trace_dir, workflow_id)
    return entry, update.lines


def ended_after(lines: list[StoredRecord], step: int) -> list[Span]:
    """The spans that records after ``step`` end (what flowd exports when found at it)."""
    builder, out = SpanBuilder(), []
    for line in lines:
        spans = builder.add(LiveTrace.from_dict(json.loads(line.raw)))
        if line.step > step:
            out += spans
    return out


def swept(spans: Iterable[Span]) -> list[Span]:
    """``spans`` as a sweep emits them: a run it ends is said to be lost."""
    return [
        span._replace(ending=LOST) if span.kind == WORKFLOW and span.status == INCOMPLETE else span
        for span in spans
    ]


def test_a_run_whose_writer_is_gone_is_ended_incomplete_by_a_sweep(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    written_by(traces, "wf-gone", dead_pid(), -1)
    path = traces / "wf-gone" / "trace.jsonl"
    entry, lines = trace_lines(traces, "wf-gone")
    # closed at the last record, incomplete, and said to be lost
    expected = swept(spans_of(RecordStream(path)))
    fed = Fed()
    fed.feed.feed(Update(entry, lines, reset=True))
    before = list(fed.spans)
    assert fed.feed.sweep() == 1
    assert fed.spans == expected
    ended = fed.spans[len(before) :]
    # What was open ends incomplete; a task that finished in the last records is ended
    # (ok) a few records late, so its calls may come with them.
    assert {span.status for span in ended if span.status != OK} == {INCOMPLETE}
    assert all(span.task is not None for span in ended if span.status == OK)
    assert "wf-gone" in {span.name for span in ended if span.status == INCOMPLETE}
    assert fed.feed.sweep() == 0  # once
    fed.feed.feed(Update(entry, lines[-2:]))  # read again (a rotation): nothing new
    assert fed.spans == expected


def test_the_feed_emits_each_span_of_a_run_read_from_its_start_once(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    expected = run(traces, "wf-feed")
    entry, lines = trace_lines(traces, "wf-feed")
    fed = Fed()
    fed.feed.feed(Update(entry, lines[:4], reset=True))
    fed.feed.feed(Update(entry, lines[4:]))
    assert fed.spans == expected
    assert len(fed.feed) == 0  # the run ended: nothing kept
    fed.feed.feed(Update(entry, lines[5:]))  # a run met in its middle (step 6): skipped
    assert fed.spans == expected and fed.replays == []


def test_a_run_found_mid_way_is_rebuilt_and_records_read_meanwhile_are_not_fed_twice(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    run(traces, "wf-found")
    entry, lines = trace_lines(traces, "wf-found")
    found = 5  # the "prepared" record: prepare and its leaves ended before it
    fed = Fed()
    fed.feed.feed(Update(entry, [lines[found - 1]], reset=True, complete=False, found=True))
    (replay,) = fed.replays
    assert (replay.run, replay.step) == (lines[0].run, found)
    fed.feed.feed(Update(entry, lines[found : found + 3]))  # read while the rebuild runs
    assert fed.spans == []
    result = rebuild(replay, 100)  # reads the whole trace: past what the index read
    assert result.builder is None and result.last_step == len(lines)
    fed.feed.rebuilt(replay, result)
    fed.feed.feed(Update(entry, lines[found + 3 :]))  # read by the rebuild already
    assert fed.spans == ended_after(lines, found)
    assert {span.name for span in fed.spans} >= {"outer", "fan_out", "worker", "wf-found"}
    assert "prepare" not in {span.name for span in fed.spans}
    again = run(traces, "wf-found")[len(ended_after(lines, 0)) :]  # a second run, appended
    _, both = trace_lines(traces, "wf-found")
    fed.spans.clear()
    fed.feed.feed(Update(entry, both[len(lines) :]))
    assert fed.spans == again
    assert len(fed.feed) == 0


def test_records_waiting_for_rebuilds_are_bounded_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(span_feed, "MAX_WAITING_TOTAL", 10)
    traces = trace_dir(tmp_path)
    fed = Fed()
    found = {}
    for name in ("wf-a", "wf-b"):
        run(traces, name)
        entry, lines = trace_lines(traces, name)
        found[name] = (entry, lines)
        fed.feed.feed(Update(entry, [lines[4]], reset=True, complete=False, found=True))
    (entry_a, lines_a), (entry_b, lines_b) = found["wf-a"], found["wf-b"]
    fed.feed.feed(Update(entry_a, lines_a[5:11]))  # 6 wait: within the bound
    fed.feed.feed(Update(entry_b, lines_b[5:11]))  # 12 in all: wf-b's run is given up
    replay_a, replay_b = fed.replays
    fed.feed.rebuilt(replay_b, rebuild(replay_b, 100))  # too late: ignored
    fed.feed.feed(Update(entry_b, lines_b[11:]))
    assert fed.spans == []
    fed.feed.rebuilt(replay_a, rebuild(replay_a, 100))
    fed.feed.feed(Update(entry_a, lines_a[11:]))
    assert fed.spans == ended_after(lines_a, 5)


def test_a_rebuild_that_fails_skips_the_run_and_a_reset_forgets_it(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    run(traces, "wf-lost")
    entry, lines = trace_lines(traces, "wf-lost")
    fed = Fed()
    fed.feed.feed(Update(entry, [lines[2]], reset=True, complete=False, found=True))
    fed.feed.rebuilt(fed.replays[0], None)  # the trace could not be read
    fed.feed.feed(Update(entry, lines[3:]))
    assert fed.spans == []
    fed.feed.feed(Update(entry, [lines[2]], reset=True, complete=False, found=True))
    fed.feed.feed(Update(entry, lines, reset=True))  # read again from its start
    fed.feed.rebuilt(fed.replays[1], rebuild(fed.replays[1], 100))  # too late: ignored
    assert fed.spans == ended_after(lines, 0)


def test_a_sweep_waits_until_the_index_has_read_a_dead_writer_s_last_records(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    lines = written_by(traces, "wf-late", dead_pid(), 9)
    path = traces / "wf-late" / "trace.jsonl"
    path.write_bytes(b"".join(lines[:3]))
    index, entry, update = indexed(traces, "wf-late")
    fed = Fed()
    fed.feed.feed(update)  # the first 3 records
    with path.open("ab") as trace:  # the writer wrote 6 more, then died; not read yet
        trace.write(b"".join(lines[3:]))
    assert fed.feed.sweep() == 0
    later = index.read_now(entry)
    assert later is not None and len(later.lines) == 6
    fed.feed.feed(later)
    entry.behind = True  # as if one refresh had not read it all
    assert fed.feed.sweep() == 0
    entry.behind = False
    assert fed.feed.sweep() == 1
    assert fed.spans == swept(spans_of(RecordStream(path)))  # ended at the 9th record
    assert max(span.last_step for span in fed.spans) == 9


def test_a_run_found_mid_way_is_swept_once_its_writer_dies_after_the_rebuild(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    writer = subprocess.Popen(["sleep", "60"])
    try:
        written_by(traces, "wf-found-dies", writer.pid, 9)
        index, entry, _ = indexed(traces, "wf-found-dies")
        fed = Fed()
        fed.feed.feed(index.read_now(entry, LATEST))  # found when flowd started
        (replay,) = fed.replays
        fed.feed.rebuilt(replay, rebuild(replay, 100))
        assert fed.feed.sweep() == 0  # its writer runs
    finally:
        writer.kill()
        writer.wait()
    assert fed.feed.sweep() == 1  # nothing was read after the rebuild: swept all the same
    path = traces / "wf-found-dies" / "trace.jsonl"
    whole = swept(spans_of(RecordStream(path)))
    incomplete = [s for s in fed.spans if s.status == INCOMPLETE]
    assert incomplete == [s for s in whole if s.status == INCOMPLETE]
    assert incomplete
    # Besides, only the calls of tasks whose end came in the last records (ended late).
    assert all(s in whole and s.status == OK for s in fed.spans if s.status != INCOMPLETE)
