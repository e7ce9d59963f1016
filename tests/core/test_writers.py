"""One writer per workflow, and bounded traces: the writer lock and size rotation."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from doeff import Get, Put, do

from doeff_flow_core import (
    BadTraceSetting,
    WorkflowBusy,
    run_workflow,
    trace_file,
    trace_observer,
)
from doeff_flow_core.tracefiles.reading import read_all, read_history
from doeff_flow_core.tracefiles.scan import scan_workflows
from tests.support.procs import wait_until

Start = Callable[..., subprocess.Popen[str]]

BLOCKED_WRITER = """
import sys, time
from pathlib import Path
from doeff import Get, do
from doeff_flow_core import run_workflow

@do
def held():
    yield Get("x")
    Path(sys.argv[2]).touch()
    time.sleep(60)
    return 1

run_workflow(held(), "wf-held", sys.argv[1])
"""


@do
def counting(n: int) -> Any:
    for i in range(n):
        yield Put("x", i)
    return (yield Get("x"))


def steps(path: Path) -> list[int]:
    tail = read_all(path)
    assert tail.skipped == 0 and not tail.torn
    return [record.step for record in tail.records]


def test_a_second_writer_of_the_same_workflow_is_refused(
    tmp_path: Path, start_python: Start
) -> None:
    ready = tmp_path / "ready"
    first = start_python(BLOCKED_WRITER, tmp_path, ready)
    assert wait_until(ready.exists, 20), first.stderr.read() if first.stderr else ""
    # its one record flushed (the flusher writes it up to an interval after ``ready``)
    assert wait_until(lambda: read_all(trace_file(tmp_path, "wf-held")).records, 20)
    before = trace_file(tmp_path, "wf-held").read_bytes()
    ran: list[bool] = []

    @do
    def second() -> Any:
        ran.append(True)
        return (yield Get("x"))

    with pytest.raises(WorkflowBusy, match=rf"wf-held .*process {first.pid}"):
        run_workflow(second(), "wf-held", tmp_path)
    with pytest.raises(WorkflowBusy), trace_observer("wf-held", tmp_path):
        pass
    assert ran == []
    assert trace_file(tmp_path, "wf-held").read_bytes() == before  # nothing interleaved


def test_the_lock_dies_with_its_process(tmp_path: Path, start_python: Start) -> None:
    ready = tmp_path / "ready"
    first = start_python(BLOCKED_WRITER, tmp_path, ready)
    assert wait_until(ready.exists, 20)
    assert wait_until(lambda: read_all(trace_file(tmp_path, "wf-held")).records, 5)
    first.kill()
    first.wait()
    result = run_workflow(counting(3), "wf-held", tmp_path)
    assert result.value == 2
    runs = {line.run for line in read_all(trace_file(tmp_path, "wf-held")).records}
    assert len(runs) == 2  # the killed run and the new one, told apart by run id


def test_sequential_runs_append(tmp_path: Path) -> None:
    for _ in range(3):
        assert run_workflow(counting(2), "wf-seq", tmp_path).is_ok()
    records = read_all(trace_file(tmp_path, "wf-seq")).records
    assert len({r.run for r in records}) == 3
    assert [r.status for r in records].count("completed") == 3


def test_rotation_keeps_every_line_whole_and_in_order(tmp_path: Path) -> None:
    result = run_workflow(
        counting(6000), "wf-rot", tmp_path, max_trace_bytes=300_000, keep_rotated=2
    )
    assert result.value == 5999
    path = trace_file(tmp_path, "wf-rot")
    files = sorted(p.name for p in path.parent.iterdir() if p.name.startswith("trace"))
    assert files == ["trace.jsonl", "trace.jsonl.1", "trace.jsonl.2"]  # .3 was dropped
    parts = [path.with_name("trace.jsonl.2"), path.with_name("trace.jsonl.1"), path]
    seen = [step for part in parts for step in steps(part)]
    assert seen == list(range(seen[0], 6003))  # contiguous up to the terminal record
    assert seen[0] > 1  # the oldest part is gone
    for part in parts[:2]:
        # A part may pass the limit by at most one flush's batch; it never splits a line.
        assert part.stat().st_size < 300_000 + 1100 * 700


def test_rotation_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOEFF_FLOW_MAX_TRACE_BYTES", "200000")
    monkeypatch.setenv("DOEFF_FLOW_KEEP_ROTATED", "1")
    run_workflow(counting(3000), "wf-env", tmp_path)
    directory = trace_file(tmp_path, "wf-env").parent
    assert sorted(p.name for p in directory.glob("trace.jsonl*")) == [
        "trace.jsonl",
        "trace.jsonl.1",
    ]


def test_zero_disables_rotation(tmp_path: Path) -> None:
    run_workflow(counting(2000), "wf-big", tmp_path, max_trace_bytes=0)
    assert [p.name for p in trace_file(tmp_path, "wf-big").parent.glob("trace.jsonl*")] == [
        "trace.jsonl"
    ]


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_bad_rotation_settings_are_refused_before_anything_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DOEFF_FLOW_MAX_TRACE_BYTES", value)
    with pytest.raises(BadTraceSetting, match="DOEFF_FLOW_MAX_TRACE_BYTES must be a whole"):
        run_workflow(counting(1), "wf-bad", tmp_path)
    assert not (tmp_path / "wf-bad").exists()


def test_history_reads_across_rotated_parts(tmp_path: Path) -> None:
    run_workflow(counting(4000), "wf-hist", tmp_path, max_trace_bytes=250_000, keep_rotated=3)
    path = trace_file(tmp_path, "wf-hist")
    in_newest = len(read_all(path).records)
    wanted = in_newest + 500
    tail = read_history(path, wanted)
    assert [r.step for r in tail.records] == list(range(4003 - wanted, 4003))
    assert tail.skipped == 0
    everything = read_history(path, 10**6)  # no more parts: what there is
    assert everything.records[-1].status == "completed"
    assert len(everything.records) < 4002  # the oldest part was dropped


def test_a_new_run_cuts_the_torn_line_a_killed_run_left(tmp_path: Path) -> None:
    run_workflow(counting(2), "wf-torn", tmp_path)
    path = trace_file(tmp_path, "wf-torn")
    whole = path.read_bytes()
    with path.open("ab") as handle:  # what kill -9 in the middle of a write leaves
        handle.write(b'{"workflow_id":"wf-torn","step":4,"sta' + b"x" * 100_000)
    run_workflow(counting(2), "wf-torn", tmp_path)
    data = path.read_bytes()
    assert data.startswith(whole) and b"xxx" not in data
    tail = read_all(path)
    assert (tail.skipped, tail.torn) == (0, False)
    assert [r.status for r in tail.records].count("completed") == 2


def test_history_reads_past_a_gap_in_the_part_numbers(tmp_path: Path) -> None:
    run_workflow(counting(3000), "wf-gap", tmp_path, max_trace_bytes=250_000, keep_rotated=5)
    path = trace_file(tmp_path, "wf-gap")
    before = read_history(path, 10**6)
    # A writer killed between two renames leaves .1 and .3 with no .2.
    path.with_name("trace.jsonl.2").rename(path.with_name("trace.jsonl.9"))
    after = read_history(path, 10**6)
    assert len(after.records) == len(before.records)
    assert sorted(r.step for r in after.records) == [r.step for r in before.records]


def test_a_trace_that_just_rotated_still_shows_its_latest_record(tmp_path: Path) -> None:
    run_workflow(counting(50), "wf-just", tmp_path)
    path = trace_file(tmp_path, "wf-just")
    path.rename(path.with_name("trace.jsonl.1"))  # killed right after a rotation
    path.touch()
    [summary] = scan_workflows(tmp_path)
    assert summary.problem is None
    assert summary.latest is not None and summary.latest.status == "completed"


def test_a_writer_killed_in_the_middle_of_a_rotation_leaves_a_readable_trace(
    tmp_path: Path,
) -> None:
    run_workflow(counting(50), "wf-mid", tmp_path)
    path = trace_file(tmp_path, "wf-mid")
    path.rename(path.with_name("trace.jsonl.1"))  # renamed, the new file not yet opened
    [summary] = scan_workflows(tmp_path)
    assert summary.latest is not None and summary.latest.status == "completed"
    assert read_history(path, 5).records[-1].status == "completed"
