"""``watch`` of a workflow with many spawned tasks: every live task shown (the box scrolls
and says how many are below), each told apart by its arguments, its own last slog and
how long it has been in its effect, the failure naming its task, the keys in a footer.

The model is tested directly (records in, lines out); then a real report spawning ten
region tasks is watched in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from doeff_flow_core import LiveTrace, TraceFrame
from doeff_flow_core.records import SlogLine
from flowctl import exitcodes
from flowctl.render.box import plain, watch_picture
from flowctl.render.text import change_line
from flowctl.render.textwidth import width
from flowctl.sources.base import FeedUpdate, WorkflowEntry
from flowctl.watch.dashboard import DashboardUI, picture
from flowctl.watch.state import WorkflowView, fold
from tests.support.flowctl import Tmux, flowctl_command
from tests.support.flowd import Flowd
from tests.support.procs import PROJECT_ROOT, python_command, python_env, wait_until
from tests.support.workflows import FAILING_REGION, REGIONS, REGIONS_PROGRAM, write_traces

T0 = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
KEYS = "q quit  ↑↓ PgUp PgDn scroll  ? help"


def rec(step: int, task: int | None = None, **fields: object) -> LiveTrace:
    values: dict[str, object] = {
        "workflow_id": "wf-r",
        "step": step,
        "status": "running",
        "current_effect": "Await(sleep(3))",
        "trace": (TraceFrame("report", "/src/report.py", 27, call=1, args=""),),
        "started_at": T0,
        "updated_at": T0,
        "run": "r1",
        "task": task,
    }
    values.update(fields)
    return LiveTrace(**values)  # type: ignore[arg-type]


def region_record(step: int, index: int, at: datetime, **fields: object) -> LiveTrace:
    region = REGIONS[index]
    frame = TraceFrame(
        "fetch_region", "/src/report.py", 14, call=10 + index, args=f"region={region!r}, pages=4"
    )
    values: dict[str, object] = {
        "trace": (frame,),
        "updated_at": at,
        "last_slog": SlogLine("fetching", {"region": region, "page": "3"}),
        "spawned": ((index, None),),
    }
    values.update(fields)
    return rec(step, index, **values)


def ten_tasks() -> WorkflowView:
    """Ten region tasks, region i last heard from at T0 + i s, each after its own slog;
    then the root, in Gather, writes the newest record (another slog in force)."""
    records = [region_record(i + 2, i, T0 + timedelta(seconds=i)) for i in range(10)]
    root = rec(20, updated_at=T0 + timedelta(seconds=10), current_effect="Gather(...)")
    root = replace(root, last_slog=records[-1].last_slog)
    return fold(WorkflowView("wf-r"), FeedUpdate((rec(1), *records, root)))


# -- the model -----------------------------------------------------------------------------------


def test_every_live_task_is_kept_longest_idle_first_with_its_own_slog() -> None:
    view = ten_tasks()
    assert [record.task for record in view.tasks] == list(range(10))  # 8 were kept before
    for index in range(10):
        slog = view.slog_of(index)
        assert slog is not None and slog.fields["region"] == REGIONS[index]
    # the stuck task heard from first: a minute later it is still there, and first
    later = region_record(30, 9, T0 + timedelta(minutes=5))
    view = fold(view, FeedUpdate((later,)))
    assert view.tasks[0].task == 0 and view.tasks[-1].task == 9 and len(view.tasks) == 10


def test_a_tall_box_scrolls_and_says_how_many_tasks_are_below() -> None:
    view = ten_tasks()
    now = T0 + timedelta(seconds=12)
    lines, top = watch_picture(view, "running", now, 100, location=".", rows=20)
    text = plain(lines)
    assert len(lines) == 20 and top == 0
    assert re.search(r"\+\d more tasks \(↓\)", text), text
    assert "region='mena'" not in text and text.splitlines()[-1] == KEYS
    # scrolled to the end: the last task shown, the first ones said to be above
    lines, top = watch_picture(view, "running", now, 100, location=".", rows=20, top=1000)
    text = plain(lines)
    assert top > 0 and "region='mena'" in text and "above (↑)" in text
    # whole (rows None, the picture left on the terminal): every task, no footer
    whole = plain(watch_picture(view, "running", now, 100, location=".")[0])
    assert all(f"region={region!r}" in whole for region in REGIONS) and KEYS not in whole


def test_each_task_shows_its_arguments_effect_age_and_own_slog() -> None:
    view = ten_tasks()
    text = plain(watch_picture(view, "running", T0 + timedelta(seconds=12), 120, location=".")[0])
    line = next(line for line in text.splitlines() if "region='apac'" in line)
    assert "task 0  fetch_region(region='apac', pages=4)" in line and "report.py:14" in line
    effect = text.splitlines()[text.splitlines().index(line) + 1]
    assert "↳ Await(sleep(3)) · 12.0s" in effect and "slog: fetching region=apac page=3" in effect
    assert "· 3.0s  slog: fetching region=mena" in text  # task 9: 12 - 9 s


def test_arguments_are_cut_to_the_width_keeping_the_location() -> None:
    long = replace(
        region_record(2, 0, T0), trace=(TraceFrame("fetch_region", "/r.py", 7, args="x" * 300),)
    )
    view = fold(WorkflowView("wf-r"), FeedUpdate((rec(1), long)))
    lines = watch_picture(view, "running", T0, 70, location=".", rows=30)[0]
    assert {width(plain([line])) for line in lines[:-1]} == {70}
    row = next(plain([line]) for line in lines if "fetch_region(" in plain([line]))
    assert "xxx…)" in row and "r.py:7" in row


def test_the_failure_names_the_task_it_came_from() -> None:
    view = ten_tasks()
    failing = view.tasks[2]
    assert failing.task == 2
    ended = rec(21, current_effect=None, finished_tasks=((2, T0 + timedelta(seconds=11)),))
    inner = TraceFrame("fetch_region", "/src/report.py", 16)  # raised at: no call id
    terminal = rec(
        22,
        status="failed",
        current_effect=None,
        error="RuntimeError: latam upstream returned 503",
        trace=(TraceFrame("report", "/src/report.py", 27), inner),
    )
    view = fold(view, FeedUpdate((ended, terminal)))
    assert view.failed_task is not None and view.failed_task.task == 2
    text = plain(watch_picture(view, "failed", T0, 100, location=".")[0])
    assert "error: RuntimeError: latam upstream returned 503" in text
    assert "failed in task 2 · fetch_region(region='latam', pages=4)" in text
    assert "its last slog: fetching region=latam page=3" in text
    # the same invocation, by call id, when the raised-at frame has one
    called = replace(inner, call=12)
    other = fold(ten_tasks(), FeedUpdate((replace(terminal, trace=(called,)),)))
    assert other.failed_task is not None and other.failed_task.task == 2


def test_a_plain_task_line_carries_its_arguments_and_effect_age() -> None:
    record = region_record(5, 3, T0)
    line = change_line(record, "running", T0 + timedelta(seconds=4), status_only=False, name="r")
    assert line.endswith("[task 3]  fetch_region(region='nam', pages=4)  ↳ Await(sleep(3)) · 4.0s")


# -- in a terminal, a real report of ten regions ---------------------------------------------


def writer_python() -> str:
    """An interpreter whose tracer records arguments (3.12+: sys.monitoring), when one is
    installed next to this one; else this one (no arguments in the records)."""
    if sys.version_info >= (3, 12):
        return sys.executable
    newer = PROJECT_ROOT / ".venv313" / "bin" / "python"
    return str(newer) if newer.exists() else sys.executable


def records_args() -> bool:
    return writer_python() != sys.executable or sys.version_info >= (3, 12)


@pytest.fixture
def report() -> Iterator[Callable[..., Path]]:
    started: list[subprocess.Popen[str]] = []

    def start(trace_dir: Path, workflow_id: str, mode: str = "hold", rest: float = 120) -> Path:
        command = python_command(REGIONS_PROGRAM, [trace_dir, workflow_id, mode, rest])
        command[0] = writer_python()
        proc = subprocess.Popen(
            command,
            env=python_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(proc)
        return trace_dir / workflow_id / "trace.jsonl"

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def tmux() -> Iterator[Callable[..., Tmux]]:
    opened: list[Tmux] = []

    def open_tmux(*args: object, columns: int = 100, rows: int = 40) -> Tmux:
        command = flowctl_command(*args)
        session = Tmux(f"flowctl-tasks-{len(opened)}", command, columns=columns, rows=rows)
        opened.append(session)
        return session

    yield open_tmux
    for session in opened:
        session.close()


def resting(trace: Path) -> bool:
    """Every region has said it is resting (all ten tasks blocked in their long sleep)."""
    text = trace.read_text() if trace.exists() else ""
    return text.count('"current_effect":"slog(\'resting\'') >= len(REGIONS)


def task_ids(trace: Path) -> dict[str, int]:
    """Each region's task id, from the slogs its task wrote."""
    ids: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        slog = record.get("last_slog") or {}
        if slog.get("msg") == "fetching" and str(record.get("current_effect")).startswith("slog"):
            ids.setdefault(slog["fields"]["region"], record["task"])
    return ids


def test_all_ten_tasks_are_shown_in_a_large_window(
    tmp_path: Path, report: Callable[..., Path], tmux: Callable[..., Tmux]
) -> None:
    trace = report(tmp_path, "wf-big")
    assert wait_until(lambda: resting(trace), 60), "the regions never all rested"
    term = tmux("--trace-dir", tmp_path, "watch", "wf-big", columns=160, rows=45)
    screen = term.wait_for("10 tasks, longest idle first")
    assert all(f"task {task}" in screen for task in task_ids(trace).values()), screen
    assert "more tasks" not in screen and KEYS in screen
    for region in REGIONS:
        assert f"slog: resting region={region}" in screen  # each task its own slog
    if records_args():
        assert all(f"fetch_region(region={region!r}, pages=4)" in screen for region in REGIONS)
    # how long each has been in its effect, counting up while it sits there
    ages = re.findall(r"↳ Await\(\.\.\.\) · (\d+\.\d)s", screen)
    assert len(ages) == 10, screen
    later = wait_until(
        lambda: (
            (s := term.screen()) and max(map(float, re.findall(r"· (\d+\.\d)s", s))) >= 2.0 and s
        ),
        20,
    )
    assert later, term.screen()
    term.keys("q")
    assert "EXIT=0" in term.wait_for("EXIT=")


def test_a_small_window_says_more_tasks_and_scrolls_to_them(
    tmp_path: Path, report: Callable[..., Path], tmux: Callable[..., Tmux]
) -> None:
    trace = report(tmp_path, "wf-small")
    assert wait_until(lambda: resting(trace), 60), "the regions never all rested"
    term = tmux("--trace-dir", tmp_path, "watch", "wf-small", columns=100, rows=20)
    screen = term.wait_for("more tasks (↓)")
    hidden = int(re.search(r"\+(\d+) more tasks \(↓\)", screen).group(1))  # type: ignore[union-attr]
    mena = re.compile(r"· \d+\.\ds  slog: resting region=mena")  # the task, not the workflow
    assert hidden > 0 and not mena.search(screen)
    assert screen.rstrip().splitlines()[-1].startswith(KEYS)
    for _ in range(30):  # ↓ a line at a time, until the last task shows
        term.keys("Down")
    screen = str(wait_until(lambda: (now := term.screen()) and mena.search(now) and now, 20))
    assert "above (↑)" in screen and "more tasks (↓)" not in screen, screen
    term.keys("?")
    term.wait_for("scroll a page")  # the help
    term.keys("x")
    term.wait_for("above (↑)")
    term.keys("q")
    assert "EXIT=0" in term.wait_for("EXIT=")


def test_the_failure_banner_names_the_failing_task(
    tmp_path: Path, report: Callable[..., Path], tmux: Callable[..., Tmux]
) -> None:
    trace = report(tmp_path, "wf-fail", mode="fail", rest=120)
    term = tmux("--trace-dir", tmp_path, "watch", "wf-fail", "--exit-on-complete", columns=120)
    screen = term.wait_for("EXIT=", timeout=60)
    latam = task_ids(trace)[FAILING_REGION]
    assert f"EXIT={exitcodes.WORKFLOW_FAILED}" in screen
    assert "error: RuntimeError: latam upstream returned 503" in screen
    assert f"failed in task {latam} · fetch_region" in screen, screen
    assert f"its last slog: fetching region={FAILING_REGION} page=3" in screen
    if records_args():
        assert f"fetch_region(region={FAILING_REGION!r}, pages=4)" in screen
    # off a terminal, the last line says it too
    done = subprocess.run(
        flowctl_command("--trace-dir", tmp_path, "watch", "wf-fail", "--exit-on-complete"),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == exitcodes.WORKFLOW_FAILED
    assert done.stdout.splitlines()[-1].endswith(f"(in task {latam})"), done.stdout


def test_through_flowd_the_dashboard_opens_the_ten_tasks_watch(
    tmp_path: Path, report: Callable[..., Path], tmux: Callable[..., Tmux]
) -> None:
    traces = Path(os.path.realpath(tmp_path)) / "traces"
    traces.mkdir()
    write_traces(traces, ("wf-done", "complete", 0))
    trace = report(traces, "wf-regions")
    assert wait_until(lambda: resting(trace), 60), "the regions never all rested"
    daemon = Flowd("--root", traces, state=tmp_path / "state")
    try:
        term = tmux("--socket", daemon.socket, "--trace-dir", traces, "watch", columns=160, rows=45)
        screen = term.wait_for("1 running · 1 completed")
        assert "daemon" in screen and "wf-regions" in selected_row(screen)
        term.keys("Enter")
        screen = term.wait_for("10 tasks, longest idle first")
        assert "Esc back" in screen and len(re.findall(r"↳ Await\(\.\.\.\) · ", screen)) == 10
        if records_args():
            assert all(f"fetch_region(region={r!r}, pages=4)" in screen for r in REGIONS)
        term.keys("Escape")
        term.wait_for("1 running · 1 completed")
        term.keys("q")
        assert "EXIT=0" in term.wait_for("EXIT=")
    finally:
        daemon.cleanup()


def selected_row(screen: str) -> str:
    rows = [row for row in screen.splitlines() if row.startswith("▶")]
    assert len(rows) == 1, screen
    return rows[0]


def test_plain_watch_task_lines_carry_arguments_and_effect_age(
    tmp_path: Path, report: Callable[..., Path]
) -> None:
    watch = subprocess.Popen(
        flowctl_command("--trace-dir", tmp_path, "watch", "wf-plain"),
        env=python_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    trace = report(tmp_path, "wf-plain")
    try:
        assert wait_until(lambda: resting(trace), 60), "the regions never all rested"
        time.sleep(1.0)  # the watch polls: let it print the last changes
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    assert watch.returncode == exitcodes.OK, err
    tasks = [line for line in out.splitlines() if "[task " in line]
    shape = re.compile(r"\[task \d+\]  fetch_region(\(.*\))?  ↳ .+ · \d+\.\ds$")
    assert tasks and all(shape.search(line) for line in tasks), out
    if records_args():
        assert any("fetch_region(region='mena', pages=4)  ↳ " in line for line in tasks), out


def test_hostile_arguments_slogs_and_filters_are_shown_escaped() -> None:
    hostile = "x\x1b[31mred\x1b]0;title\x07\r\n\x9b2J\u202eevil\u2066\ud800"
    unsafe = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
    frame = TraceFrame(hostile, hostile, 1, call=5, args=hostile)
    record = region_record(2, 0, T0, trace=(frame,), last_slog=SlogLine(hostile, {hostile: "1"}))
    terminal = rec(3, status="failed", current_effect=None, error=hostile, trace=(frame,))
    running = fold(WorkflowView("wf-r"), FeedUpdate((rec(1), record)))
    failed = fold(running, FeedUpdate((terminal,)))
    assert failed.failed_task is not None  # the banner names it, escaped
    texts = [
        plain(watch_picture(running, "running", T0, 100, location=".", rows=30)[0]),
        plain(watch_picture(failed, "failed", T0, 100, location=".")[0]),
        change_line(record, "running", T0, status_only=False, name="wf-r"),
    ]
    entry = WorkflowEntry("wf-r", record, "running")
    ui = DashboardUI(query=hostile, editing=True)
    texts.append(plain(picture([entry], ui, T0, 200, 30, source=hostile)))
    for text in texts:
        assert not unsafe.search(text), text
        assert "\\x1b[31mred" in text or "/x\\x1b" in text
