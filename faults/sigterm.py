"""SIGTERM a traced worker at random moments, as systemd, Kubernetes and supervisors stop
workers: every trace ends with one ``failed`` record saying ``Terminated: SIGTERM`` and
holding a stack, every worker ends with the status SIGTERM gives (-15), and the time from
the signal to the process gone stays small.

Workers alternate between ``run_workflow`` and ``trace_observer`` and, when the project's
Python 3.13 environment is there, between the interpreters (3.11: doeff's hooks; 3.13:
``sys.monitoring``). Most run one endless workflow that mixes effect-dense nested calls,
``Await`` of short sleeps, a handler that sleeps and stretches of its own computing, so
the signal lands in each of them. Every fourth runs short workflows back to back under
one id, so the signal also lands as a run starts or ends, or between two runs: there no
run is under way and SIGTERM ends the process untouched; either way every run in the
trace ends with exactly one terminal record, never ``running``.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PY, ROOT, env, read_parts, tempdir, written_by

from doeff_flow_core.records import LiveTrace
from tests.support.procs import wait_until

# argv: trace_dir workflow_id entry ("run_workflow" | "trace_observer") kind ("endless" |
# "repeat": short runs back to back)
WORKER = r"""
import asyncio, sys, time
import doeff
from doeff import Await, EffectBase, Get, Put, Resume, do, handler, slog, with_handlers
from doeff_core_effects.scheduler import scheduled
from doeff_flow_core import run_workflow, trace_observer
from doeff_flow_core.workflow import standard_handlers

trace_dir, workflow_id, entry, kind = sys.argv[1:5]

class Nap(EffectBase):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

@handler
def nap_handler(effect: Nap, k):
    time.sleep(effect.seconds)
    return (yield Resume(k, None))

@do
def leaf(i):
    v = yield Get("n")
    yield Put("n", (v or 0) + i)
    return v

@do
def middle(i):
    yield slog("middle", i=i)
    yield leaf(i)
    if i % 50 == 0:
        yield Await(asyncio.sleep(0.02))
    if i % 70 == 0:
        yield Nap(0.02)
    if i % 90 == 0:
        total = 0
        for j in range(200_000):
            total += j
    return i

@do
def flow():
    i = 0
    while kind == "endless" or i < 3:
        yield middle(i + 1)
        i += 1
    return i

def once():
    if entry == "run_workflow":
        run_workflow(flow(), workflow_id, trace_dir, handlers=[nap_handler])
    else:
        with trace_observer(workflow_id, trace_dir) as observe:
            traced = with_handlers([nap_handler], observe(flow()))
            doeff.run(scheduled(with_handlers(standard_handlers(), traced)))

while True:
    once()
"""

TERMINATED = "Terminated: SIGTERM"
WORST_ALLOWED = 2.0  # seconds from the signal to the process gone


@dataclass
class Figures:
    runs: int = 0  # workers running one endless workflow
    recorded: int = 0  # their traces ending in a failed record saying SIGTERM, with a stack
    repeats: int = 0  # workers running short workflows back to back
    repeats_ended: int = 0  # every run of theirs ending in one terminal record
    repeats_inside: int = 0  # of those, the signal recorded in a run (else: between runs)
    default_status: int = 0  # workers ended with -SIGTERM
    worst_exit: float = 0.0
    worst_record: float = 0.0
    by_python: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        pythons = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_python.items()))
        workers = self.runs + self.repeats
        return (
            f"sigterm: {self.runs} workflows SIGTERMed, failed records saying SIGTERM: "
            f"{self.recorded}/{self.runs}; {self.repeats} back-to-back workers, every run "
            f"ended by one terminal record: {self.repeats_ended}/{self.repeats} (signal in a "
            f"run {self.repeats_inside}, between runs {self.repeats_ended - self.repeats_inside})"
            f"; exit status -15: {self.default_status}/{workers} ({pythons}); worst signal "
            f"to record {self.worst_record * 1000:.0f} ms, signal to exit "
            f"{self.worst_exit * 1000:.0f} ms"
        )

    def ok(self) -> bool:
        return (
            self.runs > 0
            and self.recorded == self.runs
            and self.repeats_ended == self.repeats
            and self.default_status == self.runs + self.repeats
            and self.worst_exit <= WORST_ALLOWED
            and not self.problems
        )


def _pythons() -> list[tuple[str, str]]:
    """This Python, and the newest other one the project has a venv of (``make
    test-newest`` makes ``.venv-3.N``), so both tracers are stopped."""
    found = [(_version(PY), PY)]
    others = sorted(
        (str(path) for path in ROOT.glob(".venv*/bin/python") if str(path) != PY),
        key=lambda path: [int(n) for n in _version(path).split(".") if n.isdigit()],
    )
    if others and _version(others[-1]) != found[0][0]:
        found.append((_version(others[-1]), others[-1]))
    return found


def _version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() or python


def _terminated(record: LiveTrace) -> bool:
    return record.status == "failed" and record.error == TERMINATED


def _check(fig: Figures, trace: Path, pid: int, sent_at: float, label: str) -> None:
    records = [r for _, tail in read_parts(trace) for r in tail.records if r.pid == pid]
    if not records:
        fig.problems.append(f"{label}: no record of this worker")
        return
    last = records[-1]
    terminal = [r for r in records if r.status != "running"]
    if _terminated(last) and last.trace and len(terminal) == 1:
        fig.recorded += 1
        fig.worst_record = max(fig.worst_record, last.updated_at.timestamp() - sent_at)
    else:
        fig.problems.append(
            f"{label}: ends {last.status} {last.error!r}, {len(terminal)} terminal records"
        )
    steps = [r.step for r in records]
    if steps != list(range(steps[0], steps[0] + len(steps))):
        fig.problems.append(f"{label}: steps not contiguous")


def _check_repeats(fig: Figures, trace: Path, pid: int, sent_at: float, label: str) -> None:
    runs: dict[str | None, list[LiveTrace]] = {}
    for _, tail in read_parts(trace):
        for record in tail.records:
            if record.pid == pid:
                runs.setdefault(record.run, []).append(record)
    if not runs:
        fig.problems.append(f"{label}: no record of this worker")
        return
    bad = [
        run
        for run, records in runs.items()
        if records[-1].status == "running"
        or [r.status != "running" for r in records].count(True) != 1
    ]
    if bad:
        fig.problems.append(f"{label}: {len(bad)} of {len(runs)} runs not ended by one record")
        return
    fig.repeats_ended += 1
    records = list(runs.values())[-1]
    last = records[-1]
    # The stack where the run was, as far as its records knew one (in the hooks tracer an
    # effect no handler has claimed yet, a run's first, is written with none).
    known = any(r.trace for r in records[:-1])
    if _terminated(last) and known and not last.trace:
        fig.problems.append(f"{label}: no stack in the SIGTERM record after running records")
    elif _terminated(last):  # (no stack when the signal came before the run's first effect)
        fig.repeats_inside += 1
        fig.worst_record = max(fig.worst_record, last.updated_at.timestamp() - sent_at)
    elif last.status != "completed":
        fig.problems.append(f"{label}: the last run ends {last.status} {last.error!r}")


def run(count: int, seed: int = 0) -> Figures:
    """``count`` workers, each SIGTERMed at a random moment after its first record."""
    rng = random.Random(seed)
    fig = Figures()
    pythons = _pythons()
    base = tempdir("fsg")
    trace_dir = base / "traces"
    try:
        for i in range(count):
            version, python = pythons[i % len(pythons)]
            entry = ("run_workflow", "trace_observer")[(i // len(pythons)) % 2]
            kind = "repeat" if i % 4 == 3 else "endless"
            workflow_id = f"wf-term-{i}"
            trace = trace_dir / workflow_id / "trace.jsonl"
            label = f"worker {i} ({version}, {entry}, {kind})"
            proc = subprocess.Popen(
                [python, "-c", WORKER, str(trace_dir), workflow_id, entry, kind],
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if kind == "repeat":
                fig.repeats += 1
            else:
                fig.runs += 1
            fig.by_python[version] = fig.by_python.get(version, 0) + 1

            if not wait_until(written_by(trace, proc.pid), 30, 0.002) or proc.poll() is not None:
                fig.problems.append(f"{label}: the worker never wrote")
                proc.kill()
                proc.communicate()
                continue
            time.sleep(rng.uniform(0.0, 0.5))
            sent_at = time.time()
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                fig.problems.append(f"{label}: still running 30 s after SIGTERM")
            fig.worst_exit = max(fig.worst_exit, time.monotonic() - sent)
            if proc.returncode == -signal.SIGTERM:
                fig.default_status += 1
            else:
                fig.problems.append(f"{label}: ended {proc.returncode}: {err[-300:]!r}")
            if err.strip():
                fig.problems.append(f"{label}: said on stderr: {err[-300:]!r}")
            check = _check_repeats if kind == "repeat" else _check
            check(fig, trace, proc.pid, sent_at, label)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return fig
