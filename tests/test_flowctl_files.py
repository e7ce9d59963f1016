"""The file source: reading ends of traces, tailing from offsets, scanning directories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flowctl_support import put_trace, record_line, write_traces

from flowctl import tailing
from flowctl.errors import BadWorkflowId, TraceDirMissing, TraceUnreadable, WorkflowNotFound
from flowctl.filesource import FileSource
from flowctl.source import EMPTY, UNREADABLE
from flowctl.tailing import read_tail


def lines(*steps: int) -> str:
    return "".join(record_line(step=s) for s in steps)


# -- read_tail --------------------------------------------------------------------------------

LINE = st.one_of(
    st.integers(1, 10**6).map(lambda s: ("record", s)),
    st.sampled_from([("garbage", 0), ("blank", 0), ("long", 0), ("badtype", 0)]),
)


def render(kind: str, step: int) -> str:
    if kind == "record":
        return record_line(step=step)
    if kind == "garbage":
        return "{not json\n"
    if kind == "long":
        return json.dumps({"pad": "x" * 1500}) + "\n"
    if kind == "badtype":
        return record_line(step="seven")  # type: ignore[arg-type]
    return "\n"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(LINE, max_size=30),
    st.sampled_from(["", '{"workflow_id": "wf', "x" * 50]),
    st.integers(1, 40),
)
def test_read_tail_matches_a_naive_reading(
    tmp_path_factory: pytest.TempPathFactory, items: list[tuple[str, int]], torn: str, n: int
) -> None:
    body = "".join(render(kind, step) for kind, step in items)
    path = tmp_path_factory.mktemp("tail") / "trace.jsonl"
    path.write_text(body + torn)
    expected = [step for kind, step in items if kind == "record"][-n:]
    # Tiny blocks and a tiny line limit, so block boundaries and over-long lines are hit.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tailing, "FIRST_BLOCK", 16)
        patch.setattr(tailing, "MAX_BLOCK", 64)
        patch.setattr(tailing, "MAX_LINE_BYTES", 1000)
        result = read_tail(path, n)
    assert [r.step for r in result.records] == expected
    assert result.end_offset == len(body.encode())
    assert result.torn == bool(torn)


def test_read_tail_stops_at_the_given_end_and_skips_oversized_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tailing, "MAX_LINE_BYTES", 500)
    text = lines(1, 2) + json.dumps({"pad": "y" * 2000}) + "\n" + lines(3)
    path = put_trace(tmp_path, "wf-x", text)
    result = read_tail(path, 5)
    assert [r.step for r in result.records] == [1, 2, 3] and result.skipped == 1
    end = len(lines(1, 2).encode()) + 10  # in the middle of the big line
    bounded = read_tail(path, 5, end=end)
    assert [r.step for r in bounded.records] == [1, 2]
    assert bounded.end_offset == len(lines(1, 2).encode()) and bounded.torn


# -- FileSource -------------------------------------------------------------------------------


def test_list_workflows_reports_problems_and_keeps_the_others(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-ok", lines(1, 2))
    put_trace(tmp_path, "wf-garbage", "not json\n{}\n")
    put_trace(tmp_path, "wf-torn-only", '{"workflow_id": "wf-torn-o')
    put_trace(tmp_path, "wf-torn", lines(1, 2, 3) + '{"workflow_id"')
    put_trace(tmp_path, "wf-empty", "")
    (tmp_path / "wf-nofile").mkdir()
    (tmp_path / "not a workflow id").mkdir()
    (tmp_path / "stray-file").write_text("x")
    entries = {e.workflow_id: e for e in FileSource(tmp_path).list_workflows()}
    assert sorted(entries) == [
        "wf-empty",
        "wf-garbage",
        "wf-nofile",
        "wf-ok",
        "wf-torn",
        "wf-torn-only",
    ]
    assert entries["wf-ok"].latest is not None and entries["wf-ok"].latest.step == 2
    assert entries["wf-torn"].latest is not None and entries["wf-torn"].latest.step == 3
    assert entries["wf-garbage"].status == UNREADABLE and "2 malformed lines" in str(
        entries["wf-garbage"].problem
    )
    assert entries["wf-torn-only"].status == UNREADABLE
    assert entries["wf-empty"].status == EMPTY and entries["wf-nofile"].status == EMPTY


def test_history_errors(tmp_path: Path) -> None:
    source = FileSource(tmp_path)
    put_trace(tmp_path, "wf-garbage", "nope\n")
    with pytest.raises(BadWorkflowId):
        source.history("../etc", 10)
    with pytest.raises(WorkflowNotFound):
        source.history("wf-none", 10)
    with pytest.raises(TraceUnreadable):
        source.history("wf-garbage", 10)
    with pytest.raises(TraceDirMissing):
        FileSource(tmp_path / "missing").history("wf-1", 10)
    with pytest.raises(TraceDirMissing):
        FileSource(tmp_path / "missing").list_workflows()


def test_feed_gives_a_snapshot_then_only_new_records(tmp_path: Path) -> None:
    source = FileSource(tmp_path)
    feed = source.follow("wf-1", snapshot=2)
    first = feed.poll(0)
    assert not first.present and first.records == ()
    path = put_trace(tmp_path, "wf-1", lines(1, 2, 3) + '{"torn')
    snap = feed.poll(0)
    assert snap.present and [r.step for r in snap.records] == [2, 3]
    assert feed.poll(0).records == ()
    with path.open("r+b") as handle:  # the writer completes the torn line, then adds one
        handle.seek(len(lines(1, 2, 3)))
        handle.write(lines(4, 5).encode())
    assert [r.step for r in feed.poll(0).records] == [4, 5]
    path.write_text(lines(1))  # truncated and rewritten: start again
    again = feed.poll(0)
    assert again.reset and [r.step for r in again.records] == [1]
    os.unlink(path)
    gone = feed.poll(0)
    assert not gone.present and gone.reset


def test_feed_of_every_record_does_not_jump(tmp_path: Path) -> None:
    path = put_trace(tmp_path, "wf-1", lines(1))
    feed = FileSource(tmp_path).follow("wf-1", snapshot=1, every_record=True)
    assert [r.step for r in feed.poll(0).records] == [1]
    many = range(2, 5000)
    with path.open("a") as handle:
        handle.write(lines(*many))
    seen: list[int] = []
    for _ in range(10):
        seen += [r.step for r in feed.poll(0).records]
    assert seen == list(many)


def test_directory_feed_sees_new_changed_and_removed_workflows(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-a", lines(1))
    feed = FileSource(tmp_path).follow_all()
    first = feed.poll(0)
    assert first.first and [e.workflow_id for e in first.changed] == ["wf-a"]
    assert feed.poll(0).changed == ()
    put_trace(tmp_path, "wf-b", lines(1))
    with (tmp_path / "wf-a" / "trace.jsonl").open("a") as handle:
        handle.write(lines(2))
    changed = {e.workflow_id: e for e in feed.poll(0).changed}
    assert set(changed) == {"wf-a", "wf-b"}
    latest = changed["wf-a"].latest
    assert latest is not None and latest.step == 2
    os.unlink(tmp_path / "wf-b" / "trace.jsonl")
    os.rmdir(tmp_path / "wf-b")
    assert feed.poll(0).removed == ("wf-b",)


def test_real_traces_list_with_effective_status(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-ok", "complete", 0), ("wf-bad", "fail", 0))
    entries = {e.workflow_id: e for e in FileSource(tmp_path).list_workflows()}
    assert entries["wf-ok"].status == "completed" and entries["wf-bad"].status == "failed"
    record = entries["wf-ok"].latest
    assert record is not None and record.result == "30"
