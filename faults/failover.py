"""flowd killed (SIGKILL) or stopped (SIGTERM) again and again under real ``flowctl
history --follow`` processes: each goes on from the trace files while flowd is away and
back through flowd when it returns, and must end (exit 0, at the workflow's end) with
every record from its first, in order, without gaps or repeats, across rotations too."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PY, Flowd, env, read_parts, tempdir

WORKFLOWS = 2
# argv: trace_dir workflow_id delay stop: steps until the file ``stop`` exists; rotating
WRITER = r"""
import os, sys, time
from doeff import Get, Put, do, slog
from doeff_flow_core import run_workflow

trace_dir, workflow_id, delay, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

@do
def tick(i):
    yield slog("tick", i=i)
    v = yield Get("n")
    yield Put("n", (v or 0) + 1)

@do
def flow():
    i = 0
    while not os.path.exists(stop):
        yield tick(i)
        time.sleep(delay)
        i += 1
    return i

run_workflow(flow(), workflow_id, trace_dir, max_trace_bytes=50_000, keep_rotated=1000)
"""
AWAY = "flowd went away"
BACK = "flowd is back"


@dataclass
class Figures:
    outages: int = 0
    followers: int = 0
    finished: int = 0
    records: int = 0
    gaps: int = 0
    repeats: int = 0
    disorder: int = 0
    to_files: int = 0
    to_flowd: int = 0
    slowest_exit: float = 0.0
    rotated: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"failover: {self.outages} flowd outages, {self.followers} history --follow "
            f"({self.finished} exited 0 at the end, slowest {self.slowest_exit:.1f} s after "
            f"it), {self.to_files} switches to files, {self.to_flowd} back to flowd, "
            f"{self.records} records seen, {self.gaps} gaps, {self.repeats} repeats, "
            f"{self.disorder} out of order, {self.rotated} workflows rotated"
        )

    def ok(self) -> bool:
        return (
            self.finished == self.followers
            and not (self.gaps or self.repeats or self.disorder or self.problems)
            and self.to_files > 0
            and self.to_flowd > 0
        )


def _judge(fig: Figures, label: str, out: str, trace: Path) -> None:
    expected = [(r.run or "", r.step) for _, tail in read_parts(trace) for r in tail.records]
    try:
        got = [(item["run"] or "", item["step"]) for item in map(json.loads, out.splitlines())]
    except (ValueError, KeyError, TypeError) as exc:
        fig.problems.append(f"{label}: unreadable output: {exc}")
        return
    fig.records += len(got)
    if not got or got[0] not in expected:
        fig.gaps += len(expected)
        fig.problems.append(f"{label}: first record {got[:1]} not in the trace")
        return
    want = expected[expected.index(got[0]) :]
    repeats = len(got) - len(set(got))
    missing = len(set(want) - set(got))
    if repeats:
        fig.repeats += repeats
        seen: dict[tuple[str, int], int] = {}
        again = next((i for i, item in enumerate(got) if seen.setdefault(item, i) != i), 0)
        first = seen[got[again]]
        fig.problems.append(
            f"{label}: {repeats} repeated records, the first {got[again]} at lines {first + 1}"
            f" and {again + 1} of {len(got)}"
        )
    if missing:
        fig.gaps += missing
        fig.problems.append(f"{label}: {missing} records missing")
    if not repeats and not missing and got != want:
        fig.disorder += 1
        fig.problems.append(f"{label}: records out of order")


def run(outages: int, followers: int, seed: int = 0) -> Figures:
    rng = random.Random(seed)
    fig = Figures(followers=followers)
    base = tempdir("ff")
    traces = base / "traces"
    traces.mkdir()
    daemon = Flowd([traces])
    writers: list[subprocess.Popen[bytes]] = []
    readers: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    try:
        stop = base / "stop"
        ids = [f"busy-{i}" for i in range(WORKFLOWS)]
        for workflow_id in ids:
            writers.append(
                subprocess.Popen(
                    [PY, "-c", WRITER, str(traces), workflow_id, "0.004", str(stop)],
                    env=env(),
                    stdout=subprocess.DEVNULL,
                )
            )
        for workflow_id in ids:
            trace = traces / workflow_id / "trace.jsonl"
            deadline = time.monotonic() + 30
            while not trace.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        for index in range(followers):
            workflow_id = ids[index % WORKFLOWS]
            out, err = base / f"f{index}.out", base / f"f{index}.err"
            command = [PY, "-m", "flowctl", "--socket", str(daemon.socket)]
            command += ["--trace-dir", str(traces), "history", workflow_id]
            command += ["--follow", "--last", "10000", "--json"]
            with open(out, "wb") as stdout, open(err, "wb") as stderr:
                proc = subprocess.Popen(command, env=env(), stdout=stdout, stderr=stderr)
            readers.append((workflow_id, proc, out, err))
        time.sleep(1.0)  # the followers are through flowd
        for number in range(outages):
            time.sleep(rng.uniform(0.2, 0.4))
            how = signal.SIGKILL if number % 2 == 0 else signal.SIGTERM
            daemon.proc.send_signal(how)
            daemon.proc.wait(20)
            fig.outages += 1
            time.sleep(rng.uniform(0.1, 0.5))  # records land while flowd is away
            daemon.start()
            time.sleep(rng.uniform(0.8, 1.2))  # long enough for the followers to come back
        stop.touch()
        for writer in writers:
            if writer.wait(120) != 0:
                fig.problems.append(f"a writer exited {writer.returncode}")
        ended = time.monotonic()
        for workflow_id, proc, out, err in readers:
            label = f"history --follow of {workflow_id} (pid {proc.pid})"
            try:
                code = proc.wait(max(1.0, ended + 30 - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                fig.problems.append(f"{label}: still running 30 s after the workflow ended")
                continue
            fig.slowest_exit = max(fig.slowest_exit, time.monotonic() - ended)
            said = err.read_text(errors="replace")
            fig.to_files += said.count(AWAY)
            fig.to_flowd += said.count(BACK)
            if code != 0:
                fig.problems.append(f"{label}: exit {code}: {said[-200:]!r}")
                continue
            fig.finished += 1
            trace = traces / workflow_id / "trace.jsonl"
            _judge(fig, label, out.read_text(errors="replace"), trace)
        fig.rotated = sum(len(list((traces / i).glob("trace.jsonl.*"))) > 0 for i in ids)
    finally:
        for proc in [*writers, *(reader[1] for reader in readers)]:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
        daemon.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return fig
