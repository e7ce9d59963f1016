"""The file source: reading ends of traces, tailing from offsets, scanning directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowctl.errors import BadWorkflowId, TraceDirMissing, TraceUnreadable, WorkflowNotFound
from flowctl.sources.base import EMPTY, UNREADABLE
from flowctl.sources.files import FileSource
from tests.support.traces import put_trace, record_line
from tests.support.workflows import write_traces


def lines(*steps: int) -> str:
    return "".join(record_line(step=s) for s in steps)


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
    # the problems in the core's (and flowd's) words
    assert (entries["wf-garbage"].status, entries["wf-garbage"].problem) == (
        UNREADABLE,
        "no valid records",
    )
    assert entries["wf-torn-only"].status == UNREADABLE
    assert (entries["wf-empty"].status, entries["wf-empty"].problem) == (EMPTY, "empty trace")
    assert (entries["wf-nofile"].status, entries["wf-nofile"].problem) == (EMPTY, "no trace.jsonl")


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
