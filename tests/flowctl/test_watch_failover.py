"""A live view through flowd never freezes: when flowd is killed (SIGKILL) or stopped
(SIGTERM) mid-watch, ``watch`` (plain, full screen, the dashboard) and ``history
--follow`` go on from the trace files at once, say so in one line, lose and repeat no
record, exit with the workflow's outcome, and go back to flowd when it returns.

Real parts: flowd as a subprocess on a socket under /tmp, real doeff workflows writing
traces, flowctl as a process (its output in files, read as it grows), tmux for the
full screen."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl import exitcodes
from flowctl.sources.files import FileSource, TraceFeed
from tests.support.flowctl import Tmux, flowctl_command
from tests.support.flowd import Flowd
from tests.support.procs import python_env, wait_for
from tests.support.traces import records
from tests.support.workflows import RECORDS_PER_STEP, finish, workflow, write_traces

AWAY = "flowctl: flowd went away; reading trace files in "
BACK = "flowd is back at "
# Small parts, kept long enough that nothing is dropped while a test reads them.
ROTATE = {"DOEFF_FLOW_MAX_TRACE_BYTES": "4000", "DOEFF_FLOW_KEEP_ROTATED": "200"}
SWITCH_SECONDS = 3.0  # a generous bound on "within 1 s" for a shared 2-core machine


class World:
    """A trace directory, flowd indexing it on a short socket path, and the processes
    a test starts (killed and reaped at the end)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.traces = Path(os.path.realpath(base)) / "traces"
        self.traces.mkdir()
        self.dir = Path(tempfile.mkdtemp(prefix="fo", dir="/tmp"))
        self.socket = self.dir / "s"
        self.daemon: Flowd | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {"XDG_STATE_HOME": str(self.state)}

    def start_flowd(self) -> Flowd:
        if self.daemon is not None:
            self.daemon.cleanup()
        self.daemon = Flowd("--root", self.traces, state=self.state, socket_path=self.socket)
        return self.daemon

    def command(self, *args: object) -> list[str]:
        return flowctl_command("--socket", self.socket, "--trace-dir", self.traces, *args)

    def flowctl(self, name: str, *args: object) -> Follower:
        follower = Follower(self.base / name, self.command(*args))
        self.procs.append(follower.proc)
        return follower

    def writer(
        self,
        workflow_id: str,
        steps: int,
        delay: float,
        gate: Path,
        hold: int,
        env: dict[str, str] | None = None,
    ) -> Writer:
        env = {**self.env, **(env or {})}
        proc = workflow(self.traces, workflow_id, steps, delay, gate=gate, hold=hold, env=env)
        self.procs.append(proc)
        return Writer(proc, self.traces / workflow_id / "trace.jsonl")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        if self.daemon is not None:
            self.daemon.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


class Writer:
    def __init__(self, proc: subprocess.Popen[bytes], trace: Path) -> None:
        self.proc = proc
        self.trace = trace

    def count(self) -> int:
        """Records written, in every part of the trace."""
        total = 0
        for part in self.trace.parent.glob("trace.jsonl*"):
            try:
                total += len(records(part))
            except FileNotFoundError:  # renamed by a rotation meanwhile: counted next time
                pass
        return total


class Follower:
    """flowctl with its stdout and stderr in files, read as they grow."""

    def __init__(self, base: Path, command: list[str], cwd: Path | None = None) -> None:
        self.out_path, self.err_path = base.with_suffix(".out"), base.with_suffix(".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                command,
                env=python_env(),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def wait_err(self, text: str, timeout: float = 20) -> float:
        """Seconds until ``text`` is on stderr."""
        started = time.monotonic()
        wait_for(lambda: text in self.err(), timeout, f"{text!r} on stderr: {self.err()!r}")
        return time.monotonic() - started

    def wait_out_lines(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.out().splitlines()) >= count, timeout, f"{count} lines")

    def exit_code(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout} s; out: {self.out()[-500:]!r} err: {self.err()!r}"
            ) from None


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    try:
        yield world
    finally:
        world.close()


def gone(daemon: Flowd, how: signal.Signals) -> None:
    """flowd killed (the socket file stays) or stopped (it removes it)."""
    daemon.proc.send_signal(how)
    daemon.proc.wait(20)


def steps_of(out: str) -> list[int]:
    return [int(line.split("step ")[1].split()[0]) for line in out.splitlines() if "step " in line]


# -- history --follow ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "env"),
    [(signal.SIGKILL, {}), (signal.SIGTERM, ROTATE)],
    ids=["kill", "term-rotating"],
)
def test_history_follow_goes_on_from_the_files_and_back_to_flowd(
    world: World, how: signal.Signals, env: dict[str, str]
) -> None:
    """Every record once, in order, across flowd going away and coming back (and across
    the trace's rotations meanwhile)."""
    gate, steps, hold = world.base / "gate", 14, 3
    total = steps * RECORDS_PER_STEP + 1
    writer = world.writer("wf-h", steps, 0.1, gate, hold, env)
    wait_for(lambda: writer.count() >= hold * RECORDS_PER_STEP, what="the first steps")
    daemon = world.start_flowd()
    follow = world.flowctl("history", "history", "wf-h", "--follow", "--last", "10000", "--json")
    follow.wait_out_lines(hold * RECORDS_PER_STEP)
    gone(daemon, how)
    gate.touch()  # records are written while flowd is away
    assert follow.wait_err(AWAY) < SWITCH_SECONDS
    wait_for(lambda: len(follow.out().splitlines()) >= hold * RECORDS_PER_STEP + 6, 30)
    writer.proc.send_signal(signal.SIGSTOP)  # paused, so it still runs when flowd is back
    world.start_flowd()
    follow.wait_err(BACK)
    writer.proc.send_signal(signal.SIGCONT)
    finish(writer.proc)
    assert follow.exit_code(20) == exitcodes.OK, follow.err()
    shown = [json.loads(line) for line in follow.out().splitlines()]
    assert [item["step"] for item in shown] == list(range(1, total + 1))  # none lost or twice
    assert shown[-1]["status"] == "completed"
    if env:
        assert (writer.trace.parent / "trace.jsonl.2").exists()  # it did rotate
    lines = follow.err().splitlines()
    assert lines[0] == f"{AWAY}{world.traces}", lines
    assert lines[1] == f"flowctl: {BACK}{world.socket}; reading through it again", lines
    assert len(lines) == 2, lines


# -- plain watch ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "workflow_id", "code"),
    [
        (signal.SIGKILL, "wf-w", exitcodes.OK),
        (signal.SIGTERM, "fail-w", exitcodes.WORKFLOW_FAILED),
    ],
    ids=["kill-completes", "term-fails"],
)
def test_plain_watch_exits_with_the_outcome_while_flowd_is_away(
    world: World, how: signal.Signals, workflow_id: str, code: int
) -> None:
    gate, steps, hold = world.base / "gate", 10, 2
    writer = world.writer(workflow_id, steps, 0.05, gate, hold)
    wait_for(lambda: writer.count() >= hold * RECORDS_PER_STEP, what="the first steps")
    daemon = world.start_flowd()
    watch = world.flowctl("watch", "watch", workflow_id, "--exit-on-complete")
    watch.wait_out_lines(1)
    gone(daemon, how)
    gate.touch()  # the workflow runs to its end while flowd is away
    finish(writer.proc, failing=code != exitcodes.OK)
    ended = time.monotonic()
    assert watch.exit_code(10) == code, watch.err()
    assert time.monotonic() - ended < 5
    assert watch.err() == f"{AWAY}{world.traces}\n"
    shown = steps_of(watch.out())
    assert shown == sorted(set(shown)), shown  # no step twice, none backwards
    assert shown[-1] == steps * RECORDS_PER_STEP + 1
    last = watch.out().splitlines()[-1]
    assert ("  completed  " if code == exitcodes.OK else "  failed  ") in last, last


# -- the dashboard -------------------------------------------------------------------------------


@pytest.mark.parametrize("scoped", [True, False], ids=["scoped", "every-root"])
def test_the_dashboard_keeps_working_across_a_flowd_stop_and_start(
    world: World, scoped: bool
) -> None:
    """Scoped to a trace directory, or every directory flowd indexes (read from each)."""
    gate = world.base / "gate"
    first = world.writer("wf-a", 2, 0.0, gate, 99)
    finish(first.proc)
    daemon = world.start_flowd()
    if scoped:
        dashboard = world.flowctl("dash", "watch", "--json")
    else:  # no --trace-dir, in a directory with no trace directory of its own
        command = flowctl_command("--socket", world.socket, "watch", "--json")
        dashboard = Follower(world.base / "dash", command, cwd=world.base)
        world.procs.append(dashboard.proc)
    wait_for(lambda: '"wf-a"' in dashboard.out(), what="wf-a listed")
    gone(daemon, signal.SIGTERM)
    assert dashboard.wait_err(AWAY) < SWITCH_SECONDS
    finish(world.writer("wf-b", 2, 0.0, gate, 99).proc)  # written while flowd is away
    wait_for(lambda: '"wf-b"' in dashboard.out(), what=f"wf-b listed: {dashboard.out()}")
    world.start_flowd()
    dashboard.wait_err(BACK)
    finish(world.writer("wf-c", 2, 0.0, gate, 99).proc)  # pushed by flowd again
    wait_for(lambda: '"wf-c"' in dashboard.out(), what=f"wf-c listed: {dashboard.out()}")
    assert dashboard.proc.poll() is None, dashboard.err()
    seen = [json.loads(line) for line in dashboard.out().splitlines()]
    completed = {item["workflow_id"] for item in seen if item["status"] == "completed"}
    assert completed == {"wf-a", "wf-b", "wf-c"}
    assert len(dashboard.err().splitlines()) == 2, dashboard.err()


# -- the full screen -----------------------------------------------------------------------------


def test_the_full_screen_says_so_on_its_status_line_and_shows_the_end(world: World) -> None:
    gate, steps, hold = world.base / "gate", 8, 2
    writer = world.writer("wf-s", steps, 0.05, gate, hold)
    wait_for(lambda: writer.count() >= hold * RECORDS_PER_STEP, what="the first steps")
    daemon = world.start_flowd()
    screen = Tmux("flowctl-failover", world.command("watch", "wf-s"), columns=160)
    try:
        screen.wait_for("running")
        gone(daemon, signal.SIGKILL)
        started = time.monotonic()
        screen.wait_for("flowd went away; reading trace files in")
        assert time.monotonic() - started < SWITCH_SECONDS
        gate.touch()
        finish(writer.proc)
        screen.wait_for("completed")  # the end, read from the files
        world.start_flowd()
        shown = screen.wait_for(f"{BACK}{world.socket}; reading through it again")
        assert "completed" in shown and "idle" not in shown.split("completed")[0][-40:]
        screen.keys("q")
        screen.wait_for("EXIT=0")
    finally:
        screen.close()


def test_the_full_screen_exits_on_complete_while_flowd_is_away(world: World) -> None:
    gate, steps, hold = world.base / "gate", 6, 2
    writer = world.writer("wf-e", steps, 0.05, gate, hold)
    wait_for(lambda: writer.count() >= hold * RECORDS_PER_STEP, what="the first steps")
    daemon = world.start_flowd()
    screen = Tmux("flowctl-failover", world.command("watch", "wf-e", "--exit-on-complete"))
    try:
        screen.wait_for("running")
        gone(daemon, signal.SIGTERM)
        gate.touch()
        finish(writer.proc)
        shown = screen.wait_for("EXIT=0", timeout=10)
        assert "completed" in shown
    finally:
        screen.close()


def test_the_shells_watch_goes_on_from_the_files(world: World) -> None:
    gate, steps, hold = world.base / "gate", 6, 2
    writer = world.writer("wf-sh", steps, 0.05, gate, hold)
    wait_for(lambda: writer.count() >= hold * RECORDS_PER_STEP, what="the first steps")
    daemon = world.start_flowd()
    term = Tmux("flowctl-failover-shell", world.command(), columns=160)
    try:
        term.wait_for("flowctl>")
        term.keys("watch wf-sh", "Enter")
        term.wait_for("┌─ wf-sh [running]")
        gone(daemon, signal.SIGKILL)
        term.wait_for("flowd went away; reading trace files in")
        gate.touch()
        finish(writer.proc)
        term.wait_for("┌─ wf-sh [completed]")
        term.keys("C-c")  # leaves the watch, not the shell
        term.wait_for("flowctl>")
        world.start_flowd()
        term.keys("watch wf-sh", "Enter")  # through flowd again
        term.wait_for("┌─ wf-sh [completed]")
        term.keys("C-c")
        term.wait_for("flowctl>")
        term.keys("C-d")
        assert "EXIT=0" in term.wait_for("EXIT=")
    finally:
        term.close()


def test_the_shells_one_shot_commands_follow_flowd_away_and_back(world: World) -> None:
    write_traces(world.traces, ("wf-one", "paced", 3), env=world.env)
    daemon = world.start_flowd()
    term = Tmux("flowctl-failover-oneshot", world.command(), columns=160)
    try:
        term.wait_for("flowctl>")
        term.keys("ps", "Enter")
        term.wait_for("wf-one")
        gone(daemon, signal.SIGKILL)
        term.keys("history wf-one", "Enter")
        screen = term.wait_for("flowd went away; reading trace files in")
        assert "Connection refused" not in screen, screen
        term.wait_for("completed")
        world.start_flowd()
        term.keys("ps", "Enter")
        term.wait_for("flowd is back at")
        term.keys("exit", "Enter")  # typed ahead if ps is still printing
        assert "EXIT=0" in term.wait_for("EXIT=")
    finally:
        term.close()


# -- the file feed's resume point ----------------------------------------------------------------


def test_a_file_feed_resumes_just_after_a_record_across_rotated_parts(world: World) -> None:
    write_traces(world.traces, ("wf-r", "paced", 12), env={**world.env, **ROTATE})
    trace = world.traces / "wf-r" / "trace.jsonl"
    assert (trace.parent / "trace.jsonl.2").exists()
    source = FileSource(world.traces)
    every = source.history("wf-r", 100000).records
    assert len(every) > 30
    for index in (0, 5, len(every) // 2, len(every) - 2, len(every) - 1):
        last = every[index]
        feed = TraceFeed(trace, "wf-r", 10, True, after=(last.run, last.step))
        assert feed.poll(0).records == every[index + 1 :], index
        assert feed.poll(0).records == ()
    elsewhere = TraceFeed(trace, "wf-r", 10, True, after=("another-run", 3))
    assert elsewhere.poll(0).records == every  # no such record: from the first, none skipped
