"""``history`` with time: each record's clock time and how long its step stood, the result on
the completed row, a derived ``lost``/``unknown`` row for a run that wrote no terminal
record, ``--run`` (one run of a re-run workflow) and ``--since``; real workflows re-run
under one id, read by real ``flowctl`` processes."""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowctl import exitcodes
from flowctl.render.timefmt import clock
from tests.support.flowctl import assert_one_error_line, flowctl
from tests.support.procs import private_state
from tests.support.traces import json_lines, put_trace, record_line, records
from tests.support.workflows import run_workflow_to_end, start_blocked, write_traces

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"
TIMED = re.compile(rf"^step +(\d+)  (\S+) +({CLOCK}|-) +(.*?)  (\S.*)$")
DELAY = 0.25  # the workflow sleeps this long after each tick's Put


def timed_rows(text: str) -> list[tuple[int, str, str, str, str]]:
    """``(step, status, clock, took, text)`` of each record line (run lines left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("run "):
            continue
        match = TIMED.match(line)
        assert match is not None, line
        step, status, at, took, rest = match.groups()
        rows.append((int(step), status, at, took.strip(), rest))
    return rows


def seconds(took: str) -> float:
    number, unit = took.split()
    if number == "<1":
        return 0.0
    return float(number) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


@pytest.fixture(scope="module")
def rerun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``wf-again`` run twice to the end: 3 ticks each, DELAY seconds after each Put."""
    base = tmp_path_factory.mktemp("rerun")
    env = {"XDG_STATE_HOME": str(base / "state")}
    for _ in range(2):
        run_workflow_to_end(base / "traces", "wf-again", steps=3, delay=DELAY, env=env)
    return base / "traces"


def test_each_record_shows_its_time_and_how_long_its_step_stood(rerun: Path) -> None:
    done = flowctl("--trace-dir", rerun, "history", "wf-again", "--last", "10")
    assert done.returncode == exitcodes.OK, done.stderr
    written = records(rerun / "wf-again" / "trace.jsonl")[-10:]
    rows = timed_rows(done.stdout)
    assert [row[0] for row in rows] == [r["step"] for r in written]
    for row, record in zip(rows, written, strict=True):
        assert row[2] == clock(datetime.fromisoformat(record["updated_at"]))
    puts = [row for row in rows if row[4].startswith("Put(")]
    assert puts and all(DELAY <= seconds(row[3]) < DELAY + 1 for row in puts)
    others = [row for row in rows if row[4].startswith(("Get(", "slog("))]
    assert others and all(seconds(row[3]) < DELAY for row in others)
    *_, last = rows
    assert last[1] == "completed" and last[3] == "" and last[4] == "result: 3"


def test_a_re_run_shows_each_run_and_run_picks_one_by_a_prefix(rerun: Path) -> None:
    runs = list(dict.fromkeys(r["run"] for r in records(rerun / "wf-again" / "trace.jsonl")))
    assert len(runs) == 2
    both = flowctl("--trace-dir", rerun, "history", "wf-again", "--last", "100").stdout
    assert [line.split()[1] for line in both.splitlines() if line.startswith("run ")] == runs
    first = flowctl(
        "--trace-dir", rerun, "history", "wf-again", "--run", runs[0][:6], "--last", "100"
    )
    assert first.returncode == exitcodes.OK, first.stderr
    rows = timed_rows(first.stdout)
    assert [row[0] for row in rows] == list(range(1, 11))  # the whole first run, no header
    assert rows[-1][1:2] == ("completed",) and "run " not in first.stdout
    as_json = flowctl("--json", "--trace-dir", rerun, "history", "wf-again", "--run", runs[1])
    assert {r["run"] for r in json_lines(as_json.stdout)} == {runs[1]}


def test_an_unknown_or_ambiguous_run_is_an_error_listing_the_runs(rerun: Path) -> None:
    runs = list(dict.fromkeys(r["run"] for r in records(rerun / "wf-again" / "trace.jsonl")))
    unknown = flowctl("--trace-dir", rerun, "history", "wf-again", "--run", "zzz")
    assert_one_error_line(unknown, exitcodes.NOT_FOUND, "has no run 'zzz'")
    assert all(run in unknown.stderr for run in runs)
    ambiguous = flowctl("--trace-dir", rerun, "history", "wf-again", "--run", "")
    assert_one_error_line(ambiguous, exitcodes.USAGE, "more than one run")
    assert all(run in ambiguous.stderr for run in runs)


def test_since_keeps_the_records_of_the_last_age(tmp_path: Path) -> None:
    now = datetime.now(UTC)

    def at(ago: timedelta, step: int) -> str:
        moment = (now - ago).isoformat()
        return record_line("wf-old", step, started_at=moment, updated_at=moment, pid=None)

    put_trace(tmp_path, "wf-old", at(timedelta(hours=3), 1) + at(timedelta(minutes=2), 2))
    recent = flowctl("--trace-dir", tmp_path, "history", "wf-old", "--since", "10m")
    assert [row[0] for row in timed_rows(recent.stdout)] == [2]
    every = flowctl("--trace-dir", tmp_path, "history", "wf-old", "--since", "1d")
    assert [row[0] for row in timed_rows(every.stdout)] == [1, 2]
    bad = flowctl("--trace-dir", tmp_path, "history", "wf-old", "--since", "soon")
    assert_one_error_line(bad, exitcodes.USAGE, "not a duration")


def test_a_killed_run_ends_with_a_derived_lost_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_state(monkeypatch, tmp_path / "state")
    killed = start_blocked(tmp_path, "wf-killed", {})
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = flowctl("--trace-dir", tmp_path, "history", "wf-killed")
    *_, last = done.stdout.splitlines()
    assert last.split()[:3] == [
        "step",
        str(records(tmp_path / "wf-killed" / "trace.jsonl")[-1]["step"]),
        "lost",
    ]
    assert f"writer pid {killed.pid} is gone" in last and "no terminal record" in last
    *written, derived = json_lines(
        flowctl("--json", "--trace-dir", tmp_path, "history", "wf-killed").stdout
    )
    assert derived == {
        "derived": True,
        "workflow_id": "wf-killed",
        "run": written[-1]["run"],
        "step": written[-1]["step"],
        "status": "lost",
        "pid": killed.pid,
        "host": written[-1]["host"],
        "last_updated_at": written[-1]["updated_at"],
    }
    assert all("derived" not in record for record in written)  # records stay exact


def test_a_running_workflow_gets_no_derived_line_and_another_host_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_state(monkeypatch, tmp_path / "state")
    live = start_blocked(tmp_path, "wf-live", {})
    try:
        done = flowctl("--trace-dir", tmp_path, "history", "wf-live")
        assert done.returncode == exitcodes.OK
        assert done.stdout.splitlines()[-1].split()[2] == "running"
        assert "derived" not in done.stdout
    finally:
        live.kill()
        live.wait()
    put_trace(tmp_path, "wf-far", record_line("wf-far", 1, host="elsewhere", pid=1))
    far = flowctl("--trace-dir", tmp_path, "history", "wf-far")
    last = far.stdout.splitlines()[-1]
    assert last.split()[2] == "unknown" and "host elsewhere" in last
    (record, derived) = json_lines(
        flowctl("--json", "--trace-dir", tmp_path, "history", "wf-far").stdout
    )
    assert derived["derived"] is True and derived["status"] == "unknown"
    assert json.loads(record_line("wf-far", 1, host="elsewhere", pid=1))["step"] == record["step"]


def test_a_task_step_is_timed_to_its_own_next_record_or_its_end(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-tasks", "tasks", 3), env={"XDG_STATE_HOME": str(tmp_path / "s")})
    done = flowctl("--trace-dir", tmp_path, "history", "wf-tasks", "--last", "100")
    assert done.returncode == exitcodes.OK, done.stderr
    lines = done.stdout.splitlines()
    rows = timed_rows(done.stdout)
    awaits = [i for i, row in enumerate(rows) if row[4].startswith("Await(")]
    assert len(awaits) == 6  # three sleeps of 0.15 s in each of two tasks
    for i in awaits:
        # the sibling's records come between; each Await still stood its own 0.15 s,
        # the last one of each task until the task finished
        assert 0.14 <= seconds(rows[i][3]) < 1, lines[i]
    assert any("[task" in lines[i + 1] and lines[i + 1][-3:] != lines[i][-3:] for i in awaits[:-1])
