"""SIGTERM is recorded: systemd, Kubernetes and supervisors stop workers with SIGTERM; the
trace then ends with a ``failed`` record (``Terminated: SIGTERM``, the stack where the
run was) and the process ends as SIGTERM ends it (status -15). Real workflows in real
subprocesses: blocked in ``Await``, in a handler's sleep, spinning in their own code, in
an effect-dense loop; through ``run_workflow``, ``trace_observer`` and ``doeff-flow run``.
A handler the application installed is left alone; the disposition found is put back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doeff
import pytest
from doeff import Put, do, with_handlers
from doeff_core_effects.scheduler import scheduled

from doeff_flow_core import run_workflow, trace_observer
from doeff_flow_core.tracing.observer import TraceObserver
from doeff_flow_core.tracing.routing import _task_routing
from doeff_flow_core.workflow import standard_handlers
from tests.support.flowctl import flowctl_command
from tests.support.procs import PROJECT_ROOT, python_env, wait_until
from tests.support.traces import records

# A module of workflows, run as a script (argv: trace_dir workflow_id entry) or by
# ``doeff-flow run sigflows:program``. $SIGFLOW_MODE says where the workflow stays:
#   await    Await(asyncio.sleep(120))
#   handler  a handler sleeping 120 s in time.sleep
#   busy     its own code spinning, no effect
#   dense    an endless loop of effects
# $SIGFLOW_APP=exit3: the application's own SIGTERM handler (sys.exit(3)).
SIGFLOWS = r"""
import asyncio, os, signal, sys, time
import doeff
from doeff import Await, EffectBase, Get, Put, Resume, do, handler, slog, with_handlers
from doeff_core_effects.scheduler import scheduled
from doeff_flow_core import run_workflow, trace_observer
from doeff_flow_core.tracing.observer import TraceObserver
from doeff_flow_core.tracing.routing import _task_routing
from doeff_flow_core.workflow import standard_handlers

MODE = os.environ.get("SIGFLOW_MODE", "await")

class Slow(EffectBase):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

@handler
def slow_handler(effect: Slow, k):
    time.sleep(effect.seconds)
    return (yield Resume(k, None))

@do
def step(i):
    yield Put("i", i)
    return (yield Get("i"))

@do
def spin():
    yield slog("spinning")
    n = 0
    while n >= 0:  # spins
        n += 1
    return n

@do
def flow():
    yield slog("started", mode=MODE)
    yield step(0)
    if MODE == "await":
        yield Await(asyncio.sleep(120))  # awaits
    elif MODE == "handler":
        yield Slow(120)  # sleeps in a handler
    elif MODE == "busy":
        yield spin()
    elif MODE == "dense":
        i = 0
        while True:
            i = (yield step(i)) + 1
    return "done"

program = flow()

if __name__ == "__main__":
    trace_dir, workflow_id, entry = sys.argv[1:4]
    if os.environ.get("SIGFLOW_APP") == "exit3":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
    if entry == "run_workflow":
        run_workflow(flow(), workflow_id, trace_dir, handlers=[slow_handler])
    else:
        with trace_observer(workflow_id, trace_dir) as observe:
            traced = with_handlers([slow_handler], observe(flow()))
            doeff.run(scheduled(with_handlers(standard_handlers(), traced)))
"""

# Where each mode is when the signal comes: (innermost function, text of its line).
WHERE = {
    "await": ("flow", "# awaits"),
    "handler": ("flow", "# sleeps in a handler"),
    "busy": ("spin", "# spins"),
    "dense": ("step", "yield"),
}
DOEFF = str(Path(sys.executable).parent / "doeff")
SIGNAL_TO_EXIT = 5.0  # seconds; measured: tens of ms (the machine is shared)


def ready(mode: str) -> Callable[[dict[str, Any]], bool]:
    """Whether the latest record shows the workflow where ``mode`` keeps it."""
    if mode == "await":
        return lambda r: "Await" in str(r.get("current_effect"))
    if mode == "handler":
        return lambda r: "Slow" in str(r.get("current_effect"))
    if mode == "busy":
        return lambda r: (r.get("last_slog") or {}).get("msg") == "spinning"
    return lambda r: int(r.get("step") or 0) > 300


def start(
    tmp_path: Path, entry: str, mode: str, app: str = ""
) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "sigflows.py"
    script.write_text(SIGFLOWS)
    traces = tmp_path / "traces"
    env = python_env({"SIGFLOW_MODE": mode, "SIGFLOW_APP": app})
    if entry == "doeff-flow run":
        command = flowctl_command(
            "run", "--trace-dir", traces, "--id", "wf-term", "sigflows:program", seed=True
        )
    elif entry == "doeff run":
        command = [DOEFF, "run", "--program", "sigflows.program"]
        command += ["--transform", "doeff_flow_core.traced"]
        env.update(
            PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), str(tmp_path)]),
            HOME=str(tmp_path),  # no ~/.doeff.py of the machine takes part
            DOEFF_FLOW_TRACE_DIR=str(traces),
            DOEFF_FLOW_WORKFLOW_ID="wf-term",
        )
    else:
        command = [sys.executable, str(script), str(traces), "wf-term", entry]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, traces / "wf-term" / "trace.jsonl"


def wait_ready(proc: subprocess.Popen[str], path: Path, mode: str) -> None:
    check = ready(mode)

    def there() -> bool:
        assert proc.poll() is None, proc.communicate()
        found = records(path) if path.exists() else []
        return bool(found) and check(found[-1])

    assert wait_until(there, timeout=30, interval=0.01), f"never {mode}"


def terminate(proc: subprocess.Popen[str]) -> float:
    """SIGTERM; seconds until the process is gone."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("still running 30 s after SIGTERM")
    return time.monotonic() - sent


def assert_terminated(path: Path, mode: str) -> dict[str, Any]:
    found = records(path)
    last = found[-1]
    assert last["status"] == "failed", last
    assert last["error"] == "Terminated: SIGTERM"
    function, text = WHERE[mode]
    innermost = last["trace"][-1]
    assert innermost["function"].endswith(function), last["trace"]
    assert text in innermost["code"], last["trace"]
    assert [r["status"] for r in found].count("failed") == 1
    steps = [r["step"] for r in found]
    assert steps == list(range(1, len(steps) + 1))  # nothing lost or written twice
    return last


@pytest.mark.parametrize("mode", ["await", "handler", "busy", "dense"])
@pytest.mark.parametrize("entry", ["run_workflow", "trace_observer"])
def test_sigterm_writes_a_failed_record_then_ends_the_process_as_before(
    tmp_path: Path, entry: str, mode: str
) -> None:
    proc, path = start(tmp_path, entry, mode)
    wait_ready(proc, path, mode)
    took = terminate(proc)
    assert proc.returncode == -signal.SIGTERM, proc.communicate()
    assert took < SIGNAL_TO_EXIT
    assert_terminated(path, mode)
    assert proc.communicate()[1] == ""  # nothing said on stderr


@pytest.mark.parametrize("mode", ["await", "busy"])
@pytest.mark.parametrize("entry", ["doeff-flow run", "doeff run"])
def test_running_a_program_unchanged_records_sigterm(tmp_path: Path, entry: str, mode: str) -> None:
    """``doeff-flow run m:p`` and ``doeff run --transform doeff_flow_core.traced``."""
    proc, path = start(tmp_path, entry, mode)
    wait_ready(proc, path, mode)
    terminate(proc)
    assert proc.returncode == -signal.SIGTERM, proc.communicate()
    assert_terminated(path, mode)


def test_the_applications_own_handler_is_left_alone(tmp_path: Path) -> None:
    proc, path = start(tmp_path, "run_workflow", "await", app="exit3")
    wait_ready(proc, path, "await")
    terminate(proc)
    # Its handler ran (sys.exit(3) in the workflow), recorded as any SystemExit is.
    assert proc.returncode == 3, proc.communicate()
    last = records(path)[-1]
    assert last["status"] == "failed"
    assert last["error"].startswith("SystemExit")


# -- the disposition, in this process ---------------------------------------------------


@do
def probe(seen: list[object]) -> Any:
    seen.append(signal.getsignal(signal.SIGTERM))
    yield Put("x", 1)
    return 1


@do
def failing(seen: list[object]) -> Any:
    seen.append(signal.getsignal(signal.SIGTERM))
    yield Put("x", 1)
    raise ValueError("on purpose")


@pytest.fixture
def default_sigterm() -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process handles SIGTERM itself")


def test_the_default_disposition_is_put_back_when_the_run_returns(
    tmp_path: Path, default_sigterm: None
) -> None:
    seen: list[object] = []
    assert run_workflow(probe(seen), "wf-ok", tmp_path).is_ok()
    assert run_workflow(failing(seen), "wf-fail", tmp_path).is_err()
    with trace_observer("wf-observed", tmp_path) as observe:
        doeff.run(scheduled(with_handlers(standard_handlers(), observe(probe(seen)))))
    assert len(seen) == 3
    for during in seen:
        assert during is not signal.SIG_DFL and callable(during)  # recorded during the run
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_installed_handler_is_kept_and_a_thread_changes_nothing(
    tmp_path: Path, default_sigterm: None
) -> None:
    seen: list[object] = []

    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    try:
        assert run_workflow(probe(seen), "wf-app", tmp_path).is_ok()
        assert seen == [mine]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker = threading.Thread(target=lambda: run_workflow(probe(seen), "wf-thread", tmp_path))
    worker.start()
    worker.join()
    assert seen[-1] is signal.SIG_DFL  # only the main thread may set handlers
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_terminating_waits_for_nothing_the_interrupted_code_holds(tmp_path: Path) -> None:
    # The signal may come while the main thread sets the flusher's events (close does)
    # or holds the tracer's own locks: the record is written all the same, promptly.
    tracer = TraceObserver("wf-held", tmp_path)
    done = threading.Event()

    def terminate() -> None:
        tracer.terminate("Terminated: SIGTERM")
        done.set()

    try:
        with tracer._flusher._stop._cond, tracer._lock:  # what Event.set and encoding hold
            started = time.monotonic()
            threading.Thread(target=terminate, daemon=True).start()
            assert done.wait(5), "terminate waited for a lock it can never have"
            took = time.monotonic() - started
    finally:
        tracer._flusher.stop()
        _task_routing.detach(tracer)
    assert took < 2
    last = records(tmp_path / "wf-held" / "trace.jsonl")[-1]
    assert (last["status"], last["error"]) == ("failed", "Terminated: SIGTERM")


# SIGTERM sent from inside the tracer's own encoding, on the main thread: right after a
# batch is encoded, before it reaches the outbox (the exact tracer encodes there when its
# buffer fills; the hooks tracer at the final flush).
IN_ENCODING = r"""
import os, signal, sys, threading
from doeff import Get, Put, do
from doeff_flow_core import encode, run_workflow

original = encode.RecordEncoder.running
sent = []

def running(self, batch, now):
    text = original(self, batch, now)
    if self.last_step > 1500 and not sent and threading.current_thread() is threading.main_thread():
        sent.append(self.last_step)
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns
    return text

encode.RecordEncoder.running = running

@do
def step(i):
    yield Put("i", i)
    return (yield Get("i"))

@do
def flow():
    i = 0
    while i < 3000:
        i = (yield step(i)) + 1
    return i

run_workflow(flow(), "wf-enc", sys.argv[1])
"""


def test_sigterm_inside_the_tracers_own_encoding_loses_no_record(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", IN_ENCODING, str(tmp_path)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    found = records(tmp_path / "wf-enc" / "trace.jsonl")
    steps = [r["step"] for r in found]
    assert steps == list(range(1, len(steps) + 1))  # the batch in hand was written
    assert (found[-1]["status"], found[-1]["error"]) == ("failed", "Terminated: SIGTERM")
    assert len(found) > 1500
