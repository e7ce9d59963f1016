"""kill -9 a traced worker at random moments; every trace stays readable, nothing flushed
is lost, and a ``flowctl ps`` started within 1 s of the kill shows the workflow ``lost``."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PY, env, read_parts, tempdir, written_by

from doeff_flow_core.tracefiles.reading import read_history
from tests.support.procs import wait_until

# An effect-dense workflow of nested calls, traced with a small rotation limit. A reader
# thread writes the highest step of this process's run that read_latest has seen into a
# side file (fixed width, one pwrite): a record that was readable before the kill.
#   argv: trace_dir workflow_id side_file
WORKER = r"""
import os, sys, threading, time
from doeff import Get, Put, do, slog
from doeff_flow_core import read_latest, run_workflow

trace_dir, workflow_id, side = sys.argv[1], sys.argv[2], sys.argv[3]
trace = os.path.join(trace_dir, workflow_id, "trace.jsonl")
pid = os.getpid()
fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

def watch():
    best = 0
    while True:
        try:
            record = read_latest(trace)
        except OSError:
            record = None
        if record is not None and record.pid == pid and record.step > best:
            best = record.step
            os.pwrite(fd, b"%12d" % best, 0)
        time.sleep(0.003)

threading.Thread(target=watch, daemon=True).start()

@do
def leaf(i):
    v = yield Get("n")
    yield Put("n", (v or 0) + i)
    return v

@do
def middle(i):
    yield slog("middle", i=i, note="x" * (i % 40))
    a = yield leaf(i)
    b = yield leaf(i + 1)
    return (a or 0) + (b or 0)

@do
def flow():
    total = 0
    for i in range(10**9):
        total += yield middle(i)
        if i % 4 == 0:
            time.sleep(0.0005)
    return total

run_workflow(flow(), workflow_id, trace_dir, max_trace_bytes=40_000, keep_rotated=10_000)
"""


@dataclass
class Figures:
    kills: int = 0
    survived: int = 0
    unreadable: int = 0
    malformed: int = 0
    readers_crashed: int = 0
    lost_records: int = 0
    history_short: int = 0
    lost_shown: int = 0
    worst_lost_latency: float = 0.0
    rotated: int = 0
    torn: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"kills: {self.survived}/{self.kills} survived, {self.unreadable} unreadable traces, "
            f"{self.malformed} malformed lines, {self.readers_crashed} readers crashed, "
            f"{self.lost_records} records lost, {self.history_short} records unreachable by "
            f"read_history, lost shown within 1 s: "
            f"{self.lost_shown}/{self.kills} (worst {self.worst_lost_latency * 1000:.0f} ms), "
            f"{self.rotated} kills after rotation, {self.torn} torn tails"
        )

    def ok(self) -> bool:
        return (
            self.survived == self.kills
            and not (self.unreadable or self.malformed or self.readers_crashed)
            and not (self.lost_records or self.history_short)
            and self.lost_shown == self.kills
        )


def _ps_status(trace_dir: Path, workflow_id: str) -> str | None:
    out = subprocess.run(
        [PY, "-m", "flowctl", "--trace-dir", str(trace_dir), "ps", "--json"],
        env=env(),
        capture_output=True,
        timeout=30,
    )
    try:
        rows = json.loads(out.stdout)
    except ValueError:
        return None
    for row in rows:
        if row.get("workflow_id") == workflow_id:
            return str(row.get("status"))
    return None


def _check(fig: Figures, trace: Path, pid: int, seen: int, label: str) -> None:
    try:
        found = read_parts(trace)
        history = read_history(trace, 10**7)
    except Exception as exc:  # a reader crashed on a trace a kill left
        fig.readers_crashed += 1
        fig.problems.append(f"{label}: reader raised {exc!r}")
        return
    runs: dict[str, list[int]] = {}
    for index, (path, tail) in enumerate(found):
        if tail.skipped:
            fig.malformed += tail.skipped
            fig.problems.append(f"{label}: {tail.skipped} malformed line(s) in {path.name}")
        if tail.torn:
            if index != len(found) - 1:
                fig.unreadable += 1
                fig.problems.append(f"{label}: torn line inside {path.name}")
            else:
                fig.torn += 1
        for record in tail.records:
            runs.setdefault(record.run or "", []).append(record.step)
    if len(found) > 1:
        fig.rotated += 1
    total = sum(len(steps) for steps in runs.values())
    if len(history.records) != total:
        # read_history walks .1, .2 ... and stops at the first missing part
        names = sorted(int(p.name.rsplit(".", 1)[1]) for p, _ in found if p.name[-1].isdigit())
        holes = sorted(set(range(1, max(names, default=0) + 1)) - set(names))[:3]
        fig.history_short += total - len(history.records)
        fig.problems.append(
            f"{label}: read_history saw {len(history.records)} of {total} records "
            f"(parts 1..{max(names, default=0)}, missing {holes}, "
            f"trace.jsonl {'present' if trace.exists() else 'missing'})"
        )
    for run, steps in runs.items():
        expected = list(range(1, len(steps) + 1))
        if steps != expected:
            gaps = len(set(range(1, max(steps) + 1)) - set(steps))
            fig.lost_records += max(gaps, 1)
            fig.problems.append(f"{label}: run {run} steps not contiguous from 1 ({gaps} gaps)")
    last = max((r.step for _, t in found for r in t.records if r.pid == pid), default=0)
    if seen > last:
        fig.lost_records += seen - last
        fig.problems.append(f"{label}: step {seen} was readable before the kill, last is {last}")


def run(count: int, seed: int = 0) -> Figures:
    rng = random.Random(seed)
    fig = Figures()
    base = tempdir("fk")
    trace_dir = base / "traces"
    ids = max(1, count // 4)  # each id is re-run about four times, appending to its trace
    try:
        for i in range(count):
            workflow_id = f"kill-{i % ids}"
            side = base / f"side-{i}"
            trace = trace_dir / workflow_id / "trace.jsonl"
            proc = subprocess.Popen(
                [PY, "-c", WORKER, str(trace_dir), workflow_id, str(side)],
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            fig.kills += 1

            if not wait_until(written_by(trace, proc.pid), 30, 0.002) or proc.poll() is not None:
                proc.kill()
                _, err = proc.communicate()
                said = err.decode(errors="replace").strip().splitlines()
                fig.problems.append(
                    f"kill {i}: the worker never wrote (exit {proc.returncode}"
                    f"{': ' + said[-1][:300] if said else ''})"
                )
                continue
            time.sleep(rng.uniform(0.0, 0.35))
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            _, err = proc.communicate()
            if proc.returncode == -signal.SIGKILL:
                fig.survived += 1  # the kill landed while the workflow was running
            else:
                fig.problems.append(f"kill {i}: worker ended {proc.returncode}: {err[-500:]!r}")
            try:
                seen = int(side.read_bytes() or b"0")
            except (OSError, ValueError):
                seen = 0
            label = f"kill {i} ({workflow_id})"
            while True:
                # The latency is that of the first ps asked after the kill that says lost:
                # how long ps itself takes to start (a loaded machine) is not the rule's.
                elapsed = time.monotonic() - killed
                status = _ps_status(trace_dir, workflow_id)
                if status == "lost":
                    fig.worst_lost_latency = max(fig.worst_lost_latency, elapsed)
                    if elapsed <= 1.0:
                        fig.lost_shown += 1
                    else:
                        fig.problems.append(f"{label}: lost shown after {elapsed:.2f} s")
                    break
                if elapsed > 5:
                    fig.problems.append(f"{label}: ps says {status!r} 5 s after the kill")
                    break
            _check(fig, trace, proc.pid, seen, label)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return fig
