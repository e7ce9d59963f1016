"""flowctl through flowd: the real daemon as a subprocess on a socket under /tmp, over
traces written by real doeff workflows. The same commands through flowd and from the
files print the same; flowctl falls back to files when no daemon answers; ``watch`` is
pushed, exits 0/1 on completion, and survives a daemon killed and restarted mid-run."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.history import InMemoryHistory

from flowctl import exitcodes
from flowctl.commands import dispatch
from flowctl.options import GlobalOptions
from flowctl.shell import FlowShell
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.files import FileSource
from tests.support.flowctl import flowctl, flowctl_command, untimed
from tests.support.flowd import Flowd
from tests.support.procs import python_env, wait_for
from tests.support.traces import json_lines, put_trace, record_line, records
from tests.support.workflows import RECORDS_PER_STEP, finish, workflow, write_traces

AGE = re.compile(r"\d[0-9smhd]* ago *")
CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}", re.MULTILINE)


class World:
    """flowd over two roots of finished workflows (one id in both), plus a root for
    live workflows that flowctl adds itself (``roots.add``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.env = {"XDG_STATE_HOME": str(self.state)}
        self.traces = Path(os.path.realpath(base)) / "traces"
        self.other = Path(os.path.realpath(base)) / "other"
        self.live = Path(os.path.realpath(base)) / "live"
        self.dir = Path(tempfile.mkdtemp(prefix="fc", dir="/tmp"))
        self.socket = self.dir / "s"
        self.nowhere = self.dir / "none"  # no socket here
        self.daemon: Flowd | None = None

    def start(self, *args: object) -> Flowd:
        self.daemon = Flowd(*args, state=self.state, socket_path=self.socket)
        return self.daemon

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("flowctl-daemon"))
    write_traces(
        world.traces,
        ("wf-001", "complete", 0),
        ("wf-002", "fail", 0),
        ("wf-tasks", "tasks", 2),
        env=world.env,
    )
    put_trace(world.traces, "wf-corrupt", b"\x00\xffnot json at all\n{]\n")
    put_trace(world.traces, "wf-empty", b"")
    (world.traces / "wf-nofile").mkdir()
    done = record_line("wf-torn", 1, status="completed", result="1")
    put_trace(world.traces, "wf-torn", done + '{"workflow_id": "wf-to')
    put_trace(world.other, "wf-001", record_line("wf-001", 7, status="completed", result="7"))
    put_trace(world.other, "wf-solo", record_line("wf-solo", 2, status="failed", error="E: x"))
    world.live.mkdir()
    world.start("--root", world.traces, "--root", world.other)
    try:
        yield world
    finally:
        world.close()


def through(world: World, *args: object, trace_dir: Path | None = None) -> Any:
    """``flowctl ARGS`` through flowd, scoped to ``trace_dir`` (default: the traces)."""
    return flowctl("--socket", world.socket, "--trace-dir", trace_dir or world.traces, *args)


def unscoped(world: World, *args: object) -> Any:
    """``flowctl ARGS`` through flowd with no trace directory given: every root."""
    return flowctl("--socket", world.socket, *args, cwd=world.base)


def from_files(world: World, *args: object, trace_dir: Path | None = None) -> Any:
    return flowctl("--socket", world.nowhere, "--trace-dir", trace_dir or world.traces, *args)


def same_text(text: str) -> str:
    return CLOCK.sub("CLOCK", AGE.sub("AGE ", text))


def without_age(text: str) -> list[Any]:
    items = [json.loads(line) for line in text.splitlines()]
    for item in items:
        for one in item if isinstance(item, list) else [item]:
            one.pop("age_seconds", None)
    return items


def assert_same(world: World, *args: object, json_output: bool = False) -> Any:
    daemon, files = through(world, *args), from_files(world, *args)
    assert (daemon.returncode, daemon.stderr) == (files.returncode, files.stderr)
    if json_output:
        assert without_age(daemon.stdout) == without_age(files.stdout)
    else:
        assert same_text(daemon.stdout) == same_text(files.stdout)
    assert daemon.stdout, daemon
    return daemon


def test_flowctl_says_it_reads_through_flowd(world: World) -> None:
    done = through(world, "--verbose", "ps")
    assert world.daemon is not None
    assert f"reading through flowd (pid {world.daemon.proc.pid}) at {world.socket}" in done.stderr
    assert f"workflows in {world.traces}" in done.stderr


def test_ps_through_flowd_prints_what_the_files_give(world: World) -> None:
    done = assert_same(world, "ps")
    assert done.returncode == exitcodes.BAD_TRACE  # wf-corrupt: the same line on stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert set(rows) == {
        "wf-001", "wf-002", "wf-tasks", "wf-corrupt", "wf-empty", "wf-nofile", "wf-torn",
    }  # fmt: skip
    assert rows["wf-corrupt"].split()[1:] == ["unreadable", "-", "no", "valid", "records"]
    assert_same(world, "ps", "--json", json_output=True)
    assert_same(world, "ps", "--status", "failed")
    assert_same(world, "ps", "--status", "empty")


@pytest.mark.parametrize(
    "args",
    [
        ("history", "wf-001"),
        ("history", "wf-tasks", "--last", "7"),
        ("history", "wf-002", "--json"),
        ("history", "wf-torn"),
        ("history", "wf-002", "--follow", "--last", "3"),
    ],
    ids=lambda args: "-".join(args),
)
def test_history_through_flowd_prints_what_the_files_give(
    world: World, args: tuple[str, ...]
) -> None:
    assert_same(world, *args, json_output="--json" in args)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("history", "wf-none"), exitcodes.NOT_FOUND),
        (("history", "wf-nofile"), exitcodes.NOT_FOUND),
        (("history", "wf-corrupt"), exitcodes.BAD_TRACE),
        (("history", "../x"), exitcodes.USAGE),
        (("history", "wf-empty"), exitcodes.OK),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else str(value),
)
def test_errors_through_flowd_are_the_files_errors(
    world: World, args: tuple[str, ...], code: int
) -> None:
    daemon, files = through(world, *args), from_files(world, *args)
    assert (daemon.returncode, daemon.stdout, daemon.stderr) == (
        files.returncode,
        files.stdout,
        files.stderr,
    )
    assert daemon.returncode == code


def test_feeds_through_flowd_start_as_file_feeds_do(world: World) -> None:
    daemon = DaemonSource.connect(str(world.socket), str(world.traces), str(world.traces))
    files = FileSource(world.traces)
    for name in ("wf-001", "wf-tasks", "wf-torn", "wf-empty", "wf-nofile", "wf-none"):
        for snapshot in (1, 5, 200):
            feeds = [source.follow(name, snapshot=snapshot) for source in (daemon, files)]
            first = [feed.poll(0) for feed in feeds]
            assert (first[0].records, first[0].present) == (first[1].records, first[1].present)
            for feed in feeds:
                feed.close()
    entries = [source.list_workflows() for source in (daemon, files)]
    assert entries[0] == entries[1]


def test_a_missing_trace_directory_is_the_same_error(world: World) -> None:
    missing = world.base / "missing"
    for args in (("ps",), ("history", "wf-001")):
        daemon = through(world, *args, trace_dir=missing)
        files = from_files(world, *args, trace_dir=missing)
        assert (daemon.returncode, daemon.stderr) == (files.returncode, files.stderr)
        assert daemon.returncode == exitcodes.NOT_FOUND and "does not exist" in daemon.stderr


def test_watch_through_flowd_prints_what_the_files_give(world: World) -> None:
    completed = assert_same(world, "watch", "wf-001", "--exit-on-complete")
    assert completed.returncode == exitcodes.OK and "result: 30" in completed.stdout
    failed = assert_same(world, "watch", "wf-002", "--exit-on-complete", "--json", json_output=True)
    assert failed.returncode == exitcodes.WORKFLOW_FAILED
    dashboard = assert_same(world, "watch", "--exit-on-complete")
    assert dashboard.returncode == exitcodes.WORKFLOW_FAILED  # wf-002 failed
    assert len(dashboard.stdout.splitlines()) == 7


def test_without_a_scope_flowctl_shows_every_root_and_tells_one_id_from_another(
    world: World,
) -> None:
    done = unscoped(world, "ps")
    rows = [line.split()[0] for line in done.stdout.splitlines()]
    assert f"wf-001@{world.traces}" in rows and f"wf-001@{world.other}" in rows
    assert "wf-001" not in rows and "wf-solo" in rows and "wf-002" in rows
    listed = json.loads(unscoped(world, "ps", "--json").stdout)
    items = {item["workflow_id"] + item.get("root", ""): item for item in listed}
    assert items[f"wf-001{world.other}"]["step"] == 7
    assert "root" not in items["wf-solo"]
    other = unscoped(world, "history", f"wf-001@{world.other}")
    assert untimed(other.stdout).split() == ["step", "7", "completed", "result:", "7"]
    assert unscoped(world, "history", "wf-solo").stdout.split()[:3] == ["step", "2", "failed"]


def test_flowctl_falls_back_to_files_when_no_daemon_answers(world: World) -> None:
    dead = world.dir / "dead"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(dead))
    stale.close()  # the socket file stays; nobody listens (a daemon killed with -9)
    expected = same_text(through(world, "ps").stdout)
    for sock in (world.nowhere, dead):
        quiet = flowctl("--socket", sock, "--trace-dir", world.traces, "ps")
        assert same_text(quiet.stdout) == expected
        assert quiet.stderr == "flowctl: wf-corrupt: no valid records\n"  # nothing about flowd
        told = flowctl("--socket", sock, "--trace-dir", world.traces, "-v", "history", "wf-001")
        assert told.returncode == 0
        assert f"flowd at {sock}: " in told.stderr
        assert f"reading trace files in {world.traces}" in told.stderr
    env = {"DOEFF_FLOW_SOCKET": str(world.socket)}  # the socket named by the environment
    via_env = flowctl("--trace-dir", world.traces, "-v", "ps", env=env)
    assert "reading through flowd" in via_env.stderr


def watcher(world: World, *args: object, trace_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        flowctl_command("--socket", world.socket, "--trace-dir", trace_dir, "-v", *args),
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def test_the_dashboard_through_flowd_renames_an_id_found_under_a_second_root(
    world: World,
) -> None:
    everything = DaemonSource.connect(str(world.socket), None, str(world.socket))
    feed = everything.follow_all()
    first = feed.poll(0)
    names = {entry.name for entry in first.changed}
    assert first.first and "wf-solo" in names and f"wf-001@{world.other}" in names
    third = Path(os.path.realpath(world.base)) / "third"
    put_trace(third, "wf-solo", record_line("wf-solo", 9, status="completed", result="9"))
    assert DaemonSource.connect(str(world.socket), str(third), "x").list_workflows()  # roots.add
    removed: set[str] = set()
    changed: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while f"wf-solo@{third}" not in changed and time.monotonic() < deadline:
        update = feed.poll(0.1)
        removed.update(update.removed)
        changed.update((entry.name, entry) for entry in update.changed)
    assert removed == {"wf-solo"}
    assert {f"wf-solo@{world.other}", f"wf-solo@{third}"} <= set(changed)
    assert changed[f"wf-solo@{third}"].latest.step == 9
    feed.close()


def read_lines(proc: subprocess.Popen[str], count: int = 0, timeout: float = 20) -> list[str]:
    """The next ``count`` lines ``proc`` prints (0: all, to its end) within ``timeout``
    seconds; what a line-by-line read buffered is never lost (``communicate`` would)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not count or len(lines) < count:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
        elif proc.poll() is not None and not count:
            lines += proc.stdout.readlines()
            break
        elif time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"{len(lines)} lines of {count or 'all'}: {lines[-1:]}")
        else:
            time.sleep(0.01)
    return lines


def test_watch_through_flowd_exits_when_the_workflow_ends(world: World) -> None:
    # Watching starts before the workflows do: flowd waits for them, then pushes.
    ok = watcher(world, "watch", "wf-live", "--exit-on-complete", "--json", trace_dir=world.live)
    bad = watcher(world, "watch", "fail-live", "--exit-on-complete", trace_dir=world.live)
    assert json_lines(read_lines(ok, 1)[0])[0]["status"] == "waiting"
    assert read_lines(bad, 1)[0].startswith("waiting for fail-live to start")
    procs = [
        workflow(world.live, name, 4, 0.05, env=world.env) for name in ("wf-live", "fail-live")
    ]
    finish(procs[0])
    finish(procs[1], failing=True)
    shown = json_lines("".join(read_lines(ok)))
    assert ok.wait() == exitcodes.OK, ok.communicate()
    assert shown[-1]["status"] == "completed"
    steps = [item["step"] for item in shown]
    assert steps == sorted(set(steps)) and steps[-1] == 4 * RECORDS_PER_STEP + 1
    assert "reading through flowd" in ok.communicate()[1]
    last = read_lines(bad)[-1]
    assert bad.wait() == exitcodes.WORKFLOW_FAILED, bad.communicate()
    assert "fail-live failed on purpose" in last


def test_the_shell_reads_through_flowd(world: World) -> None:
    options = GlobalOptions(trace_dir=str(world.traces), socket=str(world.socket))
    out = io.StringIO()
    source = DaemonSource.connect(str(world.socket), str(world.traces), str(world.traces))
    shell = FlowShell(
        options, source, dispatch, out=out, err=io.StringIO(), history=InMemoryHistory()
    )
    assert shell.toolbar().startswith(f" source: daemon ({world.traces}) · ")
    assert shell.run_lines(["ps", "history wf-002 --last 2"]) == exitcodes.OK
    files_out = io.StringIO()
    files = FlowShell(options, FileSource(world.traces), dispatch, out=files_out, err=io.StringIO())
    files.run_lines(["ps", "history wf-002 --last 2"])
    assert same_text(out.getvalue()) == same_text(files_out.getvalue())
    piped = subprocess.run(
        flowctl_command("--socket", world.socket, "--trace-dir", world.traces, "shell"),
        input="history wf-001 --last 1\n",
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert piped.stdout == from_files(world, "history", "wf-001", "--last", "1").stdout
    assert piped.stdout.split()[2] == "completed", piped.stderr


def test_watch_resumes_after_flowd_is_killed_and_restarted(tmp_path: Path) -> None:
    world = World(tmp_path)
    traces, gate = world.traces, tmp_path / "gate"
    steps, hold = 12, 4
    total = steps * RECORDS_PER_STEP + 1
    writer = workflow(traces, "wf-again", steps, 0.1, gate=gate, hold=hold, env=world.env)
    followers: list[subprocess.Popen[str]] = []
    try:
        trace = traces / "wf-again" / "trace.jsonl"
        wait_for(lambda: trace.exists() and records(trace), what="the first record")
        daemon = world.start("--root", traces)
        history = watcher(
            world, "history", "wf-again", "--follow", "--last", "10000", "--json", trace_dir=traces
        )
        watch = watcher(
            world, "watch", "wf-again", "--exit-on-complete", "--json", trace_dir=traces
        )
        followers += [history, watch]
        seen = json_lines("".join(read_lines(history, hold * RECORDS_PER_STEP)))
        assert [item["step"] for item in seen] == list(range(1, hold * RECORDS_PER_STEP + 1))
        watched = json_lines(read_lines(watch, 1)[0])  # subscribed, the latest record shown
        daemon.proc.kill()  # kill -9: the socket file stays behind
        daemon.proc.wait()
        gate.touch()  # records are written while no daemon runs
        wait_for(lambda: len(records(trace)) >= hold * RECORDS_PER_STEP + 6, what="more records")
        writer.send_signal(signal.SIGSTOP)  # paused, so it still runs when flowd is back
        time.sleep(0.2)  # the followers try to reconnect meanwhile
        assert history.poll() is None and watch.poll() is None  # they wait for flowd
        assert len(records(trace)) < total  # the workflow is still running
        daemon.cleanup()
        world.start("--root", traces)
        writer.send_signal(signal.SIGCONT)
        finish(writer)
        shown = seen + json_lines("".join(read_lines(history)))
        assert history.wait() == exitcodes.OK, history.communicate()
        assert [item["step"] for item in shown] == list(range(1, total + 1))
        assert shown[-1]["status"] == "completed"
        watched += json_lines("".join(read_lines(watch)))
        assert watch.wait() == exitcodes.OK, watch.communicate()
        steps_shown = [item["step"] for item in watched]
        assert steps_shown == sorted(set(steps_shown)) and steps_shown[-1] == total
    finally:
        for proc in [writer, *followers]:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        world.close()
