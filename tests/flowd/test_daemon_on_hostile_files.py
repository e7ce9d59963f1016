"""flowd never blocks on a file: whatever sits in a root (a sparse terabyte, a FIFO, a
device, a link to /dev/zero, a 100 MB line), it indexes the rest, answers ping at once
and stops on SIGTERM."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from tests.support.flowd import Flowd
from tests.support.procs import wait_for
from tests.support.rpc import Client
from tests.support.traces import raw_lines
from tests.support.workflows import run_workflow_to_end

TIB = 1 << 40


def hostile_root(base: Path) -> tuple[Path, bytes]:
    root = Path(os.path.realpath(base / "root"))
    run_workflow_to_end(root, "wf-good", 2, env={"XDG_STATE_HOME": str(base / "state")})
    record = raw_lines(root / "wf-good" / "trace.jsonl")[-1]
    for name in ("wf-sparse", "wf-fifo", "wf-zero", "wf-long", "wf-device"):
        (root / name).mkdir()
    with open(root / "wf-sparse" / "trace.jsonl", "wb") as handle:
        handle.write(record + b"\n")
        handle.truncate(TIB)
    os.mkfifo(root / "wf-fifo" / "trace.jsonl")
    (root / "wf-zero" / "trace.jsonl").symlink_to("/dev/zero")
    with open(root / "wf-long" / "trace.jsonl", "wb") as handle:
        handle.write(b"x" * (100 << 20) + b"\n" + record + b"\n")
    if os.geteuid() == 0:
        os.mknod(root / "wf-device" / "trace.jsonl", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    return root, record


def test_flowd_indexes_around_hostile_files_and_stays_responsive(tmp_path: Path) -> None:
    root, _ = hostile_root(tmp_path)
    daemon = Flowd("--root", root, state=tmp_path / "state", wait=False)
    try:
        worst = 0.0
        deadline = time.monotonic() + 30
        ready_at: float | None = None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with Client(daemon.socket, timeout=10) as client:
                    client.call("ping")
            except OSError:
                assert daemon.proc.poll() is None, daemon.log()
                time.sleep(0.01)
                continue
            worst = max(worst, time.monotonic() - started)
            ready_at = ready_at or time.monotonic()
            if time.monotonic() - ready_at > 2:
                break
        assert ready_at is not None, daemon.log()
        assert worst < 2, worst  # a blocking read would take minutes
        with daemon.client() as client:
            found = {w["workflow_id"]: w for w in client.call("ps")["workflows"]}
        assert found["wf-good"]["record"] is not None
        assert found["wf-sparse"]["record"] is not None  # its record, before the hole
        assert found["wf-long"]["record"] is not None  # its record, after the long line
        assert found["wf-fifo"]["problem"] == "not a regular file (a FIFO)"
        assert "symbolic link" in found["wf-zero"]["problem"]
        if os.geteuid() == 0:
            assert found["wf-device"]["problem"] == "not a regular file (a character device)"
        with daemon.client() as client:
            wait_for(lambda: client.call("history", workflow_id="wf-long")["records"])
    finally:
        started = time.monotonic()
        code = daemon.stop(timeout=20)
        stopped = time.monotonic() - started
        daemon.cleanup()
    assert code == 0, daemon.log()
    assert stopped < 10, stopped  # SIGTERM is heard within a read slice
    assert "Traceback" not in daemon.log()


def inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds (from /proc/PID/fdinfo)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
    return count


def test_idle_workflows_hold_no_watch_and_a_new_run_is_seen_at_once(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path / "root"))
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    for number in range(2):
        run_workflow_to_end(root, f"wf-{number}", 1, env=env)
    for number in range(2, 20):  # finished workflows, copied
        (root / f"wf-{number}").mkdir()
        (root / f"wf-{number}" / "trace.jsonl").write_bytes(
            (root / "wf-0" / "trace.jsonl").read_bytes()
        )
    daemon = Flowd("--root", root, state=tmp_path / "state")
    try:
        assert inotify_watches(daemon.proc.pid) == 1  # the root's alone
        with daemon.client() as client:
            first = client.call("get", workflow_id="wf-1")["record"]["run"]
            run_workflow_to_end(root, "wf-1", 2, env=env)  # run again: seen through the root

            def rerun() -> bool:
                record = client.call("get", workflow_id="wf-1")["record"]
                return record["run"] != first and record["status"] == "completed"

            wait_for(rerun, timeout=10, what="the new run")
    finally:
        daemon.cleanup()
