"""``flowctl roots [list | add DIR | remove DIR]`` and ``flowctl status``, as a user runs
them: real flowctl processes, with a real flowd on a real socket and without one (the
state directory's lists read and changed directly), and in the shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl import exitcodes
from tests.support.flowctl import assert_one_error_line, flowctl, flowctl_command
from tests.support.flowd import Flowd
from tests.support.otlp import Collector
from tests.support.procs import python_env
from tests.support.workflows import run_workflow_to_end


@pytest.fixture
def state(state_home: Path) -> Path:
    return state_home / "doeff-flow"


@pytest.fixture
def daemon(tmp_path: Path, state_home: Path) -> Iterator[Flowd]:
    running = Flowd(state=state_home)
    try:
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def with_socket(daemon: Flowd) -> dict[str, str]:
    return {"DOEFF_FLOW_SOCKET": str(daemon.socket)}


def test_status_without_flowd_says_so_and_exits_3(tmp_path: Path) -> None:
    done = flowctl("status", cwd=tmp_path)
    assert done.returncode == exitcodes.NOT_RUNNING == 3, done.stderr
    assert done.stdout.splitlines()[0] == "flowd is not running (reading files)"
    assert done.stderr == ""
    as_json = json.loads(flowctl("--json", "status", cwd=tmp_path).stdout)
    assert as_json["running"] is False and as_json["socket"] == os.environ["DOEFF_FLOW_SOCKET"]


def test_status_of_a_running_flowd(tmp_path: Path, daemon: Flowd) -> None:
    done = flowctl("status", env=with_socket(daemon), cwd=tmp_path)
    assert done.returncode == exitcodes.OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"flowd is running (pid {daemon.pid})"
    facts = dict(line.split(None, 1) for line in lines[1:7])
    assert facts["pid"] == str(daemon.pid) and facts["socket"] == str(daemon.socket)
    assert facts["workflows"] == "0" and facts["roots"] == "0"
    assert "not exporting" in lines[7]
    as_json = json.loads(flowctl("--json", "status", env=with_socket(daemon)).stdout)
    assert as_json["running"] is True and as_json["pid"] == daemon.pid
    assert as_json["otlp"] is None and as_json["uptime"] >= 0


def test_status_shows_every_otlp_counter_in_a_stable_order(
    tmp_path: Path, collector: Collector
) -> None:
    daemon = Flowd("--otlp-endpoint", collector.url, state=tmp_path / "s")
    try:
        done = flowctl("status", env=with_socket(daemon))
        assert done.returncode == exitcodes.OK, done.stderr
        with daemon.client() as client:
            otlp = client.call("stats")["otlp"]
        shown = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("  otlp ")]
        assert sorted(shown) == sorted(otlp)  # every counter flowd has, whatever they are
        assert shown[:2] == ["endpoint", "state"]
        again = flowctl("status", env=with_socket(daemon)).stdout.splitlines()
        assert [line.split()[1] for line in again if line.startswith("  otlp ")] == shown
        assert json.loads(flowctl("--json", "status", env=with_socket(daemon)).stdout)["otlp"]
    finally:
        daemon.cleanup()


def test_roots_through_flowd(tmp_path: Path, daemon: Flowd, state: Path) -> None:
    traces = tmp_path / "proj" / ".doeff-flow"
    run_workflow_to_end(traces, "wf-1", 1, env={"XDG_STATE_HOME": str(tmp_path / "other")})
    env = with_socket(daemon)
    done = flowctl("roots", "add", "proj/.doeff-flow", env=env, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"added {traces} (1 workflow)\n"), done.stderr
    again = flowctl("roots", "add", str(traces), env=env)
    assert again.stdout == f"{traces} is a root already (1 workflow)\n"
    listed = flowctl("roots", env=env).stdout.splitlines()
    assert listed[0] == f"1 root, from flowd (pid {daemon.pid}) at {daemon.socket}:"
    assert listed[2].split() == ["1", "rpc", "inotify", str(traces)]
    as_json = json.loads(flowctl("--json", "roots", "list", env=env).stdout)
    assert as_json["source"] == "flowd" and as_json["pid"] == daemon.pid
    assert as_json["roots"] == [
        {"path": str(traces), "origin": "rpc", "workflows": 1, "exists": True, "watch": "inotify"}
    ]
    refused = flowctl("roots", "add", "/proc", env=env)
    assert_one_error_line(refused, exitcodes.USAGE, "/proc: refused: under /proc")
    missing = flowctl("roots", "add", str(tmp_path / "nope"), env=env)
    assert_one_error_line(missing, exitcodes.NOT_FOUND, "no such directory")
    removed = flowctl("roots", "remove", str(traces), env=env)
    assert removed.stdout == (
        f"removed {traces} (1 workflow no longer indexed; dropped from flowd-roots)\n"
    )
    assert (state / "flowd-roots").read_text() == ""
    unknown = flowctl("roots", "remove", str(traces), env=env)
    assert_one_error_line(unknown, exitcodes.NOT_FOUND, "not a root")
    assert flowctl("roots", env=env).stdout.startswith("no roots, from flowd")
    assert_one_error_line(flowctl("roots", "add", env=env), exitcodes.USAGE, "needs a DIR")
    assert flowctl("roots", "move", "x", env=env).returncode == exitcodes.USAGE


def test_roots_without_flowd_read_and_change_the_lists(tmp_path: Path, state: Path) -> None:
    registered = tmp_path / "registered"
    run_workflow_to_end(registered, "wf-r", 1)  # registers itself in this test's state
    gone = tmp_path / "gone"
    gone.mkdir()
    run_workflow_to_end(gone, "wf-g", 1)
    shutil.rmtree(gone)
    listed = flowctl("roots")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (
        f"1 root, from {state / 'trace-dirs'} and {state / 'flowd-roots'} (flowd is not running):"
    )
    assert lines[2].split() == ["1", "registry", "exists", str(registered)]
    assert lines[3] == f"forgot 1 registered directory that no longer exists: {gone}"
    assert (state / "trace-dirs").read_text() == f"{registered}\n"  # forgotten in the file
    added = tmp_path / "added"
    added.mkdir()
    done = flowctl("roots", "add", str(added))
    assert (
        done.stdout
        == f"added {added} to {state / 'flowd-roots'}; flowd indexes it when it starts\n"
    )
    as_json = json.loads(flowctl("--json", "roots").stdout)
    assert as_json["source"] == "files" and as_json["forgotten"] == []
    assert [(r["path"], r["origin"]) for r in as_json["roots"]] == [
        (str(registered), "registry"),
        (str(added), "rpc"),
    ]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        refused = flowctl("roots", "add", str(theirs))
        assert_one_error_line(refused, exitcodes.USAGE, "owned by uid 65534")
    assert_one_error_line(flowctl("roots", "add", "/sys"), exitcodes.USAGE, "refused")
    removed = flowctl("roots", "remove", str(registered))
    assert (
        removed.stdout
        == f"removed {registered} from {state / 'trace-dirs'} (flowd is not running)\n"
    )
    assert (state / "trace-dirs").read_text() == ""
    assert_one_error_line(flowctl("roots", "remove", str(registered)), 3, "not a root")
    # what was added without flowd is indexed when it starts
    daemon = Flowd(state=state.parent)
    try:
        roots = json.loads(flowctl("--json", "roots", env=with_socket(daemon)).stdout)["roots"]
        assert [(r["path"], r["origin"]) for r in roots] == [(str(added), "rpc")]
    finally:
        daemon.cleanup()


def test_status_and_roots_in_the_shell(tmp_path: Path, daemon: Flowd) -> None:
    done = subprocess.run(
        flowctl_command("shell"),
        input="status\nroots add /dev\nroots\n",
        capture_output=True,
        text=True,
        env=python_env(with_socket(daemon)),
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert done.stdout.splitlines()[0] == f"flowd is running (pid {daemon.pid})"
    assert f"no roots, from flowd (pid {daemon.pid})" in done.stdout
    assert "/dev: refused: under /dev" in done.stderr


def test_a_trace_dir_flowd_refuses_is_read_from_its_files(tmp_path: Path, daemon: Flowd) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    shm = Path(tempfile.mkdtemp(prefix="fl", dir="/dev/shm"))  # under /dev: flowd refuses it
    try:
        run_workflow_to_end(shm, "wf-shm", 1, env={"XDG_STATE_HOME": str(tmp_path / "other")})
        done = flowctl("-v", "--trace-dir", shm, "ps", env=with_socket(daemon))
        assert done.returncode == exitcodes.OK, done.stderr
        assert done.stdout.startswith("wf-shm    completed")
        assert f"does not index {shm}: under /dev" in done.stderr
        assert f"reading trace files in {shm}" in done.stderr
        with daemon.client() as client:
            assert client.call("roots.list") == {"roots": []}
    finally:
        shutil.rmtree(shm, ignore_errors=True)
