"""The real doeff programs the tests run in subprocesses, writing real traces.

- ``MODES_PROGRAM``: one program, several behaviours per workflow (complete, fail, block,
  paced, tasks); ``write_traces`` runs it to the end, ``start_workflow`` in the background.
- ``TICKS_PROGRAM``: a workflow of N steps, optionally held at a gate; ``workflow`` starts
  it, ``run_workflow_to_end`` waits for it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.procs import python_command, python_env, run_python, wait_until
from tests.support.traces import last_record

# One program, several behaviours: argv = trace_dir, then (workflow_id, mode, arg) triples.
#   complete  nested calls, state, slog; returns 30
#   fail      the same, then raises with hostile text in the message
#   block     a few effects, then blocks in Slow(arg) (default 60 s)
#   paced     arg steps of slog + Slow(0.15), then completes
#   tasks     two spawned workers interleaving arg steps each (Await), gathered
# With $FLOWCTL_TEST_GATE naming a path, paced and tasks (each worker) stop after their
# first step until that file exists (blocked, still running).
MODES_PROGRAM = r"""
import asyncio, os, sys, time
from doeff import Await, EffectBase, Gather, Get, Put, Resume, Spawn, do, handler, slog
from doeff_flow_core import run_workflow

HOSTILE = "bad \x1b[2J\x1b]0;pwned\x07 input\r\u202eevil"
GATE = os.environ.get("FLOWCTL_TEST_GATE")

def wait_for_gate():
    while GATE is not None and not os.path.exists(GATE):
        time.sleep(0.01)

class Slow(EffectBase):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

@handler
def slow_handler(effect: Slow, k):
    time.sleep(effect.seconds)
    return (yield Resume(k, None))

@do
def call_api(key):
    value = yield Get(key)
    yield Put(key, (value or 0) + 10)
    return (value or 0) + 10

@do
def process_step(i):
    yield slog("processing", step=i)
    return (yield call_api("total"))

@do
def main_workflow(mode, arg):
    result = 0
    for i in range(3):
        result = yield process_step(i)
    if mode == "fail":
        raise ValueError(HOSTILE)
    if mode == "block":
        yield slog("waiting for the model")
        yield Slow(arg or 60)
    if mode in ("paced", "paced-fail"):
        for i in range(int(arg)):
            yield slog("paced", i=i)
            yield Slow(0.15)
            if i == 0:
                wait_for_gate()
        if mode == "paced-fail":
            raise RuntimeError("paced failure")
    return result

@do
def worker(name, n):
    for i in range(n):
        yield slog("working", name=name, i=i)
        yield Await(asyncio.sleep(0.15))
        if i == 0:
            wait_for_gate()
    return name

@do
def tasks_workflow(n):
    first = yield Spawn(worker("a", n))
    second = yield Spawn(worker("b", n))
    return (yield Gather(first, second))

trace_dir = sys.argv[1]
for i in range(2, len(sys.argv), 3):
    workflow_id, mode, arg = sys.argv[i], sys.argv[i + 1], float(sys.argv[i + 2])
    program = tasks_workflow(int(arg)) if mode == "tasks" else main_workflow(mode, arg)
    run_workflow(program, workflow_id, trace_dir, handlers=[slow_handler])
"""


def workflow_args(trace_dir: Path, *specs: tuple[str, str, float]) -> list[object]:
    args: list[object] = [trace_dir]
    for workflow_id, mode, arg in specs:
        args += [workflow_id, mode, arg]
    return args


def write_traces(
    trace_dir: Path, *specs: tuple[str, str, float], env: dict[str, str] | None = None
) -> None:
    """Run the program to the end for each (workflow_id, mode, arg), in one process."""
    done = run_python(MODES_PROGRAM, *workflow_args(trace_dir, *specs), env=env)
    assert done.returncode == 0, done.stderr


def start_workflow(
    start: Callable[..., subprocess.Popen[str]],
    trace_dir: Path,
    workflow_id: str,
    mode: str,
    arg: float = 0,
    gate: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """The program running one workflow; with ``gate``, paced and tasks stop after their
    first step until that file exists."""
    env = {**(env or {}), **({"FLOWCTL_TEST_GATE": str(gate)} if gate is not None else {})}
    return start(MODES_PROGRAM, *workflow_args(trace_dir, (workflow_id, mode, arg)), env=env)


def start_blocked(trace_dir: Path, workflow_id: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a workflow and return once its trace shows it blocked in ``Slow``."""
    proc = subprocess.Popen(
        python_command(MODES_PROGRAM, workflow_args(trace_dir, (workflow_id, "block", 120))),
        env=python_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    path = trace_dir / workflow_id / "trace.jsonl"
    blocked = wait_until(
        lambda: "Slow" in str((last_record(path) or {}).get("current_effect")), timeout=30
    )
    assert blocked, f"{workflow_id} never blocked"
    return proc


# A workflow of N steps (slog, Get, Put each), DELAY seconds apart; with a GATE path it
# stops after step HOLD until that file exists (blocked, still running). An id starting
# with "fail" raises at the end.
#   argv: trace_dir workflow_id steps delay [gate hold]
TICKS_PROGRAM = r"""
import os, sys, time
from doeff import Get, Put, do, slog
from doeff_flow_core import run_workflow

trace_dir, workflow_id = sys.argv[1], sys.argv[2]
steps, delay = int(sys.argv[3]), float(sys.argv[4])
gate = sys.argv[5] if len(sys.argv) > 5 else None
hold = int(sys.argv[6]) if len(sys.argv) > 6 else 0

@do
def tick(i):
    yield slog("tick", i=i)
    count = yield Get("count")
    yield Put("count", (count or 0) + 1)
    return i

@do
def flow():
    for i in range(steps):
        yield tick(i)
        time.sleep(delay)
        if gate is not None and i + 1 == hold:
            while not os.path.exists(gate):
                time.sleep(0.01)
    if workflow_id.startswith("fail"):
        raise ValueError(f"{workflow_id} failed on purpose")
    return steps

result = run_workflow(flow(), workflow_id, trace_dir)
sys.exit(0 if result.is_ok() else 1)
"""
RECORDS_PER_STEP = 3  # slog, Get, Put; plus one terminal record per run


def workflow(
    trace_dir: Path,
    workflow_id: str,
    steps: int = 3,
    delay: float = 0.0,
    gate: Path | None = None,
    hold: int = 0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the workflow program; the caller waits (or ``run_workflow_to_end``)."""
    args: list[object] = [trace_dir, workflow_id, steps, delay]
    if gate is not None:
        args += [gate, hold]
    return subprocess.Popen(
        python_command(TICKS_PROGRAM, args),
        env=python_env(env),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_workflow_to_end(trace_dir: Path, workflow_id: str, steps: int = 3, **kw: Any) -> None:
    proc = workflow(trace_dir, workflow_id, steps, **kw)
    finish(proc, failing=workflow_id.startswith("fail"))


def finish(proc: subprocess.Popen[bytes], failing: bool = False) -> None:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (1 if failing else 0), err.decode()


# A report that spawns one task per region (REGIONS), each fetching its pages with a slog
# and an ``Await(asyncio.sleep(...))`` per page, then resting in ``Await(asyncio.sleep(
# rest))`` (alive, blocked) before it returns. Region i starts i * 0.05 s after the one
# before it, so the first regions have been idle longest. With mode "fail", the region
# named FAILING_REGION raises after its first page instead of resting.
#   argv: trace_dir workflow_id mode rest
REGIONS = ("apac", "emea", "latam", "nam", "anz", "india", "japan", "nordics", "dach", "mena")
FAILING_REGION = "latam"
REGIONS_PROGRAM = r"""
import asyncio, sys
from doeff import Await, Gather, Spawn, do, slog
from doeff_flow_core import run_workflow

REGIONS = REGIONS_HERE
FAILING = FAILING_HERE
trace_dir, workflow_id, mode, rest = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

@do
def fetch_region(region, pages):
    for page in range(pages):
        yield slog("fetching", region=region, page=page)
        yield Await(asyncio.sleep(0.02))
    if mode == "fail" and region == FAILING:
        raise RuntimeError(f"{region} upstream returned 503")
    yield slog("resting", region=region)
    yield Await(asyncio.sleep(rest))
    return pages

@do
def report():
    tasks = []
    for i, region in enumerate(REGIONS):
        yield Await(asyncio.sleep(0.05))
        tasks.append((yield Spawn(fetch_region(region, pages=4))))
    return (yield Gather(*tasks))

result = run_workflow(report(), workflow_id, trace_dir)
sys.exit(0 if result.is_ok() else 1)
""".replace("REGIONS_HERE", repr(REGIONS)).replace("FAILING_HERE", repr(FAILING_REGION))


def start_regions(
    start: Callable[..., subprocess.Popen[str]],
    trace_dir: Path,
    workflow_id: str,
    mode: str = "hold",
    rest: float = 120,
) -> subprocess.Popen[str]:
    """The report of ten regions (see REGIONS_PROGRAM), started in the background."""
    return start(REGIONS_PROGRAM, trace_dir, workflow_id, mode, rest)
