"""Helpers shared by the flowctl tests (no tests here): a real doeff program that writes
real traces in a subprocess, and ways to run ``flowctl`` / ``doeff-flow`` as processes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import python_env, run_command, run_python

# One program, several behaviours: argv = trace_dir, then (workflow_id, mode, arg) triples.
#   complete  nested calls, state, slog; returns 30
#   fail      the same, then raises with hostile text in the message
#   block     a few effects, then blocks in Slow(arg) (default 60 s)
#   paced     arg steps of slog + Slow(0.15), then completes
#   tasks     two spawned workers interleaving arg steps each (Await), gathered
# With $FLOWCTL_TEST_GATE naming a path, paced and tasks (each worker) stop after their
# first step until that file exists (blocked, still running).
PROGRAM = r"""
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
    done = run_python(PROGRAM, *workflow_args(trace_dir, *specs), env=env)
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
    return start(PROGRAM, *workflow_args(trace_dir, (workflow_id, mode, arg)), env=env)


def flowctl_command(*args: object, seed: bool = False) -> list[str]:
    if seed:
        code = "import sys; from flowctl.cli import seed_main; sys.exit(seed_main())"
        return [sys.executable, "-c", code, *map(str, args)]
    return [sys.executable, "-m", "flowctl", *map(str, args)]


def flowctl(
    *args: object,
    seed: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``flowctl ARGS`` (or ``doeff-flow ARGS``) as a process, output captured."""
    return run_command(flowctl_command(*args, seed=seed), cwd=cwd, env=env, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """A failure as flowctl reports one: exit ``code``, one ``flowctl:`` line holding ``text``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowctl: ") and text in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def record_line(workflow_id: str = "wf-x", step: int = 1, **fields: Any) -> str:
    """One trace line as the core writes it, fields overridable."""
    record: dict[str, Any] = {
        "workflow_id": workflow_id,
        "step": step,
        "status": "running",
        "current_effect": "Get('k')",
        "trace": [{"function": "main", "file": "/w/flow.py", "line": 3, "code": None}],
        "started_at": "2026-01-01T12:00:00.000000+00:00",
        "updated_at": "2026-01-01T12:00:01.000000+00:00",
        "error": None,
        "result": None,
        "last_slog": None,
        "task": None,
        "pid": None,
        "host": None,
        "run": "run1",
        "trace_exact": True,
        "pid_start": None,
    }
    record.update(fields)
    return json.dumps(record) + "\n"


def put_trace(trace_dir: Path, workflow_id: str, text: str | bytes) -> Path:
    path = trace_dir / workflow_id / "trace.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


class Tmux:
    """A private tmux server running one command in a real pseudo-terminal."""

    def __init__(self, name: str, command: list[str], columns: int = 100, rows: int = 40) -> None:
        # A server of its own, on a socket in a short private directory removed on close
        # (never reused, even while an old server shuts down).
        self._dir = tempfile.mkdtemp(prefix=f"{name}-")
        self._base = ["/usr/bin/tmux", "-S", f"{self._dir}/tmux", "-f", "/dev/null"]
        env = python_env()
        exports = [f"{key}={env[key]}" for key in ("PYTHONPATH", "XDG_STATE_HOME") if key in env]
        shell = " ".join(shlex.quote(part) for part in ["env", *exports, *command])
        # Keep the pane after the command ends, so its exit code can be read.
        self._run(
            "new-session",
            "-d",
            "-x",
            str(columns),
            "-y",
            str(rows),
            f"{shell}; echo EXIT=$?; sleep 60",
        )

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self._base, *args], capture_output=True, text=True, check=False)
        return done.stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._run("send-keys", *keys)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        from conftest import wait_until

        found = wait_until(lambda: text in (screen := self.screen()) and screen, timeout, 0.05)
        assert found, f"{text!r} never appeared; screen:\n{self.screen()}"
        return str(found)

    def close(self) -> None:
        self._run("kill-server")
        shutil.rmtree(self._dir, ignore_errors=True)
