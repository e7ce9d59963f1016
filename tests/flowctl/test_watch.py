"""``watch`` and ``history --follow`` while real workflows run: plain output off a terminal,
the full-screen box and dashboard in a real pseudo-terminal (tmux)."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowctl import exitcodes
from tests.support.flowctl import Tmux, flowctl_command, untimed
from tests.support.procs import python_env, wait_until
from tests.support.workflows import start_workflow, write_traces

Start = Callable[..., subprocess.Popen[str]]


def start_flowctl(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        flowctl_command(*args),
        env=python_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def first_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The first line ``proc`` prints, while nothing more can come yet (``communicate``
    reads the pipe itself, not what this read may have buffered past the line)."""
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], timeout)[0], "nothing printed"
    return proc.stdout.readline()


@pytest.fixture
def tmux() -> Iterator[Callable[..., Tmux]]:
    opened: list[Tmux] = []

    def open_tmux(*args: object, columns: int = 100) -> Tmux:
        session = Tmux(f"flowctl-watch-{len(opened)}", flowctl_command(*args), columns=columns)
        opened.append(session)
        return session

    yield open_tmux
    for session in opened:
        session.close()


# -- plain output --------------------------------------------------------------------------------


def test_plain_watch_waits_then_follows_then_exits_0_on_completion(
    tmp_path: Path, start_python: Start
) -> None:
    watch = start_flowctl("--trace-dir", tmp_path, "watch", "wf-p", "--exit-on-complete")
    waiting = first_line(watch)  # the watch starts before the workflow
    start_workflow(start_python, tmp_path, "wf-p", "paced", 6)
    code, out, err = finish(watch)
    lines = (waiting + out).splitlines()
    assert code == exitcodes.OK, err
    assert lines[0] == f"waiting for wf-p to start (no trace in {tmp_path} yet)"
    running = [line for line in lines if "  running  " in line]
    assert len(running) >= 3, out  # one line per change while it runs
    assert any("main_workflow  ↳ Slow(seconds=0.15)" in line for line in running)
    assert "  completed   step " in lines[-1] and lines[-1].endswith("result: 30")
    steps = [int(line.split("step ")[1].split()[0]) for line in lines[1:]]
    assert steps == sorted(steps)


def test_plain_watch_exits_1_on_failure(tmp_path: Path, start_python: Start) -> None:
    start_workflow(start_python, tmp_path, "wf-f", "paced-fail", 3)
    code, out, _ = finish(
        start_flowctl("--trace-dir", tmp_path, "watch", "wf-f", "--exit-on-complete")
    )
    assert code == exitcodes.WORKFLOW_FAILED
    assert out.splitlines()[-1].endswith("error: RuntimeError: paced failure")


def test_a_killed_writer_turns_lost_and_watch_exits_1(tmp_path: Path, start_python: Start) -> None:
    writer = start_workflow(start_python, tmp_path, "wf-k", "block", 120)
    watch = start_flowctl("--trace-dir", tmp_path, "watch", "wf-k", "--exit-on-complete")
    trace = tmp_path / "wf-k" / "trace.jsonl"
    assert wait_until(lambda: trace.exists() and b"Slow(" in trace.read_bytes(), 30)  # blocked
    time.sleep(1.0)
    assert watch.poll() is None  # still running: the writer is alive
    writer.send_signal(signal.SIGKILL)  # not reaped: a zombie is as lost as a dead process
    code, out, _ = finish(watch)
    assert code == exitcodes.WORKFLOW_FAILED
    assert f"lost: writer pid {writer.pid} is gone" in out.splitlines()[-1]


def test_status_only_prints_status_changes(tmp_path: Path, start_python: Start) -> None:
    gate = tmp_path / "go"  # held after its first step until the watch has seen it running
    start_workflow(start_python, tmp_path, "wf-s", "paced", 4, gate=gate)
    trace = tmp_path / "wf-s" / "trace.jsonl"
    assert wait_until(lambda: trace.exists() and b"\n" in trace.read_bytes(), 30)
    watch = start_flowctl(
        "--trace-dir", tmp_path, "watch", "wf-s", "--status-only", "--exit-on-complete"
    )
    running = first_line(watch)
    gate.touch()
    code, out, _ = finish(watch)
    assert code == exitcodes.OK
    assert [line.split()[-1] for line in (running + out).splitlines()] == ["running", "completed"]


def test_history_follow_streams_every_record_until_the_end(
    tmp_path: Path, start_python: Start
) -> None:
    start_workflow(start_python, tmp_path, "wf-h", "paced", 5)
    assert wait_until(lambda: (tmp_path / "wf-h" / "trace.jsonl").exists(), 30)
    code, out, _ = finish(
        start_flowctl("--trace-dir", tmp_path, "history", "wf-h", "--follow", "--last", "1000")
    )
    assert code == exitcodes.OK
    steps = [int(line.split()[1]) for line in out.splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # nothing lost, nothing twice
    assert untimed(out.splitlines()[-1]) == f"step {steps[-1]:4d}  completed   result: 30"


def test_plain_dashboard_exits_when_every_workflow_ended(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-a", "complete", 0), ("wf-b", "fail", 0))
    code, out, _ = finish(start_flowctl("--trace-dir", tmp_path, "watch", "--exit-on-complete"))
    assert code == exitcodes.WORKFLOW_FAILED  # one of them failed
    assert {line.split()[1]: line.split()[2] for line in out.splitlines()} == {
        "wf-a": "completed",
        "wf-b": "failed",
    }


# -- on a terminal -------------------------------------------------------------------------------


def test_watch_box_in_a_terminal_while_a_workflow_runs(
    tmp_path: Path, start_python: Start, tmux: Callable[..., Tmux]
) -> None:
    term = tmux("--trace-dir", tmp_path, "watch", "wf-t")
    term.wait_for("waiting for wf-t to start")
    start_workflow(start_python, tmp_path, "wf-t", "paced", 30)
    screen = term.wait_for("[running]")
    assert "┌─ wf-t [running] step " in screen
    screen = term.wait_for("↳ Slow(seconds=0.15)")
    assert "main_workflow" in screen and "Updated: " in screen and "slog: paced i=" in screen
    first_step = int(screen.split("step ")[1].split()[0])

    def moved_on() -> str | None:  # the box drawn again, at another step (or the end)
        now = term.screen()
        return now if "┌─ wf-t [" in now and f"step {first_step} " not in now else None

    later = wait_until(moved_on, 20)
    assert later, term.screen()
    assert f"[running] step {first_step} " not in later  # it updates live
    term.keys("q")
    assert "EXIT=0" in term.wait_for("EXIT=")


def test_watch_box_shows_a_sub_tree_per_live_task(
    tmp_path: Path, start_python: Start, tmux: Callable[..., Tmux]
) -> None:
    # both workers stop after their first step (still running) until the gate opens,
    # which it never does: the box is drawn while both tasks are live, however late
    start_workflow(start_python, tmp_path, "wf-tt", "tasks", 3, gate=tmp_path / "gate")
    term = tmux("--trace-dir", tmp_path, "watch", "wf-tt")
    screen = term.wait_for("task 2")
    assert "task 0" in screen and "worker" in screen and "↳ Gather(" in screen
    term.keys("C-c")
    term.wait_for("EXIT=0")


def test_watch_exit_on_complete_leaves_the_last_box_on_screen(
    tmp_path: Path, start_python: Start, tmux: Callable[..., Tmux]
) -> None:
    start_workflow(start_python, tmp_path, "wf-e", "paced-fail", 3)
    term = tmux("--trace-dir", tmp_path, "watch", "wf-e", "--exit-on-complete")
    screen = term.wait_for("EXIT=")
    assert "EXIT=1" in screen and "[failed]" in screen
    assert "error: RuntimeError: paced failure" in screen and "raised at:" in screen


def test_dashboard_in_a_terminal(
    tmp_path: Path, start_python: Start, tmux: Callable[..., Tmux]
) -> None:
    write_traces(tmp_path, ("wf-done", "complete", 0), ("wf-bad", "fail", 0))
    start_workflow(start_python, tmp_path, "wf-run", "block", 120)
    term = tmux("--trace-dir", tmp_path, "watch")
    screen = term.wait_for("Slow(seconds=120.0)")
    assert "1 running · 1 failed · 1 completed" in screen
    assert "result: 30" in screen and "error: ValueError: bad \\x1b[2J" in screen
    assert screen.index("wf-run") < screen.index("wf-bad") < screen.index("wf-done")
    term.keys("q")
    term.wait_for("EXIT=0")


def test_watch_json_gives_one_object_per_change(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-j", "fail", 0))
    code, out, _ = finish(
        start_flowctl("--trace-dir", tmp_path, "--json", "watch", "wf-j", "--exit-on-complete")
    )
    (item,) = [json.loads(line) for line in out.splitlines()]
    assert code == exitcodes.WORKFLOW_FAILED
    assert item["status"] == "failed" and item["error"].startswith("ValueError: bad \x1b[2J")


def test_a_tall_dashboard_scrolls(tmp_path: Path, tmux: Callable[..., Tmux]) -> None:
    write_traces(tmp_path, *[(f"wf-{i:02d}", "complete", 0) for i in range(30)])
    term = tmux("--trace-dir", tmp_path, "watch")
    screen = term.wait_for("30 completed")
    assert "wf-00" in screen and "wf-29" not in screen  # 60 lines, 40 rows
    term.keys("End")  # the last selected, its page shown under the counts, which stay
    screen = term.wait_for("wf-29")
    assert "30 completed" in screen and "wf-00" not in screen and "above (↑)" in screen
    term.keys("g")
    screen = term.wait_for("wf-00")
    assert "wf-29" not in screen and "more (↓)" in screen
    term.keys("q")
    term.wait_for("EXIT=0")


def test_a_failure_during_the_full_screen_watch_is_one_line(
    tmp_path: Path, tmux: Callable[..., Tmux]
) -> None:
    (tmp_path / "wf-d" / "trace.jsonl").mkdir(parents=True)
    term = tmux("--trace-dir", tmp_path, "watch", "wf-d")
    screen = term.wait_for("EXIT=")
    assert (
        "flowctl: wf-d: not a regular file (a directory)\nEXIT=5" in screen
        and "Traceback" not in screen
    )
