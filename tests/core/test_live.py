"""A live workflow in another process: its records show up while it blocks; lost when killed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from doeff_flow_core import LiveTrace, TraceFrame, effective_status, follow, read_latest
from doeff_flow_core.liveness import process_start_ticks, this_host
from tests.support.procs import wait_until

BLOCKING_WORKFLOW = """
import sys, time
from pathlib import Path
from doeff import EffectBase, Put, Resume, do, handler
from doeff_flow_core import run_workflow

base, mode = Path(sys.argv[1]), sys.argv[2]

class Slow(EffectBase):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

@handler
def slow_handler(effect: Slow, k):
    (base / "blocking").write_text("in the handler")
    time.sleep(effect.seconds)
    return (yield Resume(k, "woke"))

@do
def main():
    yield Put("phase", "start")
    if mode == "handler":
        return (yield Slow(30))
    yield Put("phase", "sleeping")
    (base / "blocking").write_text("in the body")
    time.sleep(30)
    return "woke"

run_workflow(main(), "wf-live", base / "traces", handlers=[slow_handler])
"""

# The effect each mode blocks in (or right after), as the trace renders it.
BLOCKED_EFFECT = {"handler": "Slow(seconds=30)", "body": "Put('phase', 'sleeping')"}


def start_blocked(
    start_python: Callable[..., subprocess.Popen[str]], base: Path, mode: str
) -> tuple[subprocess.Popen[str], Path, float]:
    """Start the workflow; return once it is blocked, with the time it was seen blocking."""
    proc = start_python(BLOCKING_WORKFLOW, base, mode)
    marker = base / "blocking"
    assert wait_until(lambda: marker.exists() or proc.poll() is not None, 30)
    if not marker.exists():
        raise AssertionError(f"the workflow ended before blocking: {proc.communicate()[1]}")
    return proc, base / "traces" / "wf-live" / "trace.jsonl", time.monotonic()


@pytest.mark.parametrize("mode", ["handler", "body"])
def test_record_of_a_blocking_effect_is_readable_while_it_blocks(
    tmp_path: Path, start_python: Callable[..., subprocess.Popen[str]], mode: str
) -> None:
    proc, path, blocked_at = start_blocked(start_python, tmp_path, mode)
    deadline = blocked_at + 1.0
    seen = None
    for record in follow(path, poll_interval=0.005, stop=lambda: time.monotonic() > deadline):
        if record.current_effect == BLOCKED_EFFECT[mode]:
            seen = record
            break
    assert seen is not None, f"no record of {BLOCKED_EFFECT[mode]} within 1 s of blocking"
    assert proc.poll() is None  # read while the effect still blocks
    assert seen.status == "running"
    assert seen.pid == proc.pid
    assert [f.function for f in seen.trace] == ["main"]
    assert seen.trace_exact is True


def test_killed_writer_reads_as_lost(
    tmp_path: Path, start_python: Callable[..., subprocess.Popen[str]]
) -> None:
    proc, path, _ = start_blocked(start_python, tmp_path, "handler")
    latest = wait_until(lambda: _latest_effect_is(path, BLOCKED_EFFECT["handler"]), 2)
    assert latest is not None
    assert latest.pid == proc.pid
    assert effective_status(latest) == "running"
    proc.kill()
    proc.wait()
    after = read_latest(path)
    assert after == latest  # nothing more was written: the record still says running
    assert after is not None and after.status == "running"
    assert effective_status(after) == "lost"


def _latest_effect_is(path: Path, effect: str) -> LiveTrace | None:
    try:
        latest = read_latest(path)
    except FileNotFoundError:
        return None
    return latest if latest is not None and latest.current_effect == effect else None


def _record(**changes: Any) -> LiveTrace:
    now = datetime.now(UTC)
    base = LiveTrace(
        workflow_id="wf", step=3, status="running", current_effect="Get('k')",
        trace=(TraceFrame("main", "/x.py", 3),), started_at=now, updated_at=now,
        pid=os.getpid(), host=this_host(), run="r1", pid_start=process_start_ticks(os.getpid()),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_this_process_reads_as_running() -> None:
    assert _record().pid_start is not None
    assert effective_status(_record()) == "running"
    assert effective_status(_record(pid_start=None)) == "running"


def test_reused_pid_reads_as_lost() -> None:
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    assert effective_status(_record(pid_start=ticks + 1)) == "lost"


def test_dead_pid_reads_as_lost() -> None:
    # A pid above the kernel's maximum can belong to no process.
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert effective_status(_record(pid=limit + 1, pid_start=None)) == "lost"


def test_other_host_reads_as_unknown() -> None:
    assert effective_status(_record(host="elsewhere.invalid")) == "unknown"
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    assert effective_status(_record(host="elsewhere.invalid", pid=dead)) == "unknown"


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_terminal_records_keep_their_status(status: str) -> None:
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    assert effective_status(_record(status=status, pid=dead)) == status
    assert effective_status(_record(status=status, host="elsewhere.invalid")) == status


def test_record_without_pid_keeps_its_status() -> None:
    assert effective_status(_record(pid=None, pid_start=None)) == "running"
