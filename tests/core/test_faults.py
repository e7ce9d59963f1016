"""A failing tracer never hurts the workflow: same result, one line on stderr at most."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doeff_flow_core import effective_status, read_latest
from doeff_flow_core.tracefiles.reading import read_all
from tests.support.procs import run_python

# argv: base directory, fault, entry point ("run_workflow" or "trace_observer").
#   rm     the whole trace directory is removed half way (rm -rf)
#   dir    trace.jsonl is replaced by a directory half way
#   full   trace.jsonl is a link to /dev/full: every write fails (ENOSPC)
#   fsize  the process may write only 30 kB to a file: writes fail half way (EFBIG)
FAULTY_RUN = """
import json, resource, shutil, signal, sys, time
from pathlib import Path
import doeff
from doeff import Get, Put, do, slog, with_handlers
from doeff_core_effects import slog_discard_handler, state
from doeff_flow_core import run_workflow, trace_observer

base, fault, entry = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
traces = base / "traces"
path = traces / "wf-fault" / "trace.jsonl"

def sabotage():
    # rm, dir: once the flusher has written what came before (their tests check it did)
    deadline = time.monotonic() + 30
    while fault in ("rm", "dir") and not path.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.01)
    (base / "size-before").write_text(str(path.stat().st_size))
    if fault == "rm":
        shutil.rmtree(traces)
    elif fault == "dir":
        path.unlink()
        path.mkdir()
    elif fault == "full":
        path.unlink()
        path.symlink_to("/dev/full")

@do
def work(n):
    total = 0
    for i in range(n):
        total += yield Get("n")
        yield Put("n", i)
        yield slog("tick", i=i)
        if i == n // 2 and traced and fault != "fsize":
            sabotage()
    return total

def handled(program):
    return with_handlers([state({"n": 0}), slog_discard_handler], program)

traced = False
expected = doeff.run(handled(work(400)))
traced = True

if fault == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

if entry == "run_workflow":
    result = run_workflow(work(400), "wf-fault", traces, store={"n": 0})
    value, error = result.value, repr(result.error)
else:
    with trace_observer("wf-fault", traces) as observe:
        value = doeff.run(handled(observe(work(400))))
    error = repr(None)
print(json.dumps({"expected": expected, "value": value, "error": error}))
"""

STOPPED = "doeff-flow: tracing to "
RECOVERED = "tracing goes on in a new one"


def run_faulty(base: Path, fault: str, entry: str) -> tuple[dict[str, object], str]:
    proc = run_python(FAULTY_RUN, base, fault, entry)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["expected"] == sum(range(399))  # the workflow did all its work
    assert outcome["value"] == outcome["expected"]
    assert outcome["error"] == "None"
    return outcome, proc.stderr


ENTRIES = ["run_workflow", "trace_observer"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("fault", ["rm", "dir"])
def test_trace_removed_mid_run(tmp_path: Path, fault: str, entry: str) -> None:
    _, stderr = run_faulty(tmp_path, fault, entry)
    trace = tmp_path / "traces" / "wf-fault" / "trace.jsonl"
    assert int((tmp_path / "size-before").read_text()) > 0  # it was tracing until then
    if fault == "rm":
        # Tracing recovers in a new file at the same path, and says so once.
        assert stderr.count(RECOVERED) == 1, stderr
        assert STOPPED not in stderr
        written = read_all(trace)
        steps = [r.step for r in written.records]
        assert steps == list(range(steps[0], 1202))  # the rest of the run, whole
        assert steps[0] > 1 and written.records[-1].status == "completed"
    else:
        # A directory where the file was: tracing stops, and says so once.
        assert stderr.count(STOPPED) == 1, stderr
        assert trace.is_dir()


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_trace_swapped_for_a_link_is_never_written_through(tmp_path: Path, entry: str) -> None:
    # Mid-run, trace.jsonl becomes a link to /dev/full: tracing stops rather than write
    # through it, says so once, and the workflow runs on.
    _, stderr = run_faulty(tmp_path, "full", entry)
    path = tmp_path / "traces" / "wf-fault" / "trace.jsonl"
    assert stderr.count(STOPPED) == 1, stderr
    [line] = [x for x in stderr.splitlines() if x.startswith(STOPPED)]
    assert str(path) in line
    assert "symbolic link" in line
    assert "the workflow continues untraced" in line
    assert path.is_symlink()


@pytest.mark.parametrize("entry", ENTRIES)
def test_writes_fail_half_way(tmp_path: Path, entry: str) -> None:
    _, stderr = run_faulty(tmp_path, "fsize", entry)
    path = tmp_path / "traces" / "wf-fault" / "trace.jsonl"
    assert stderr.count(STOPPED) == 1, stderr
    assert "File too large" in stderr
    # What was written before the failure is a readable trace: steps 1..k, maybe a torn end.
    written = read_all(path)
    steps = [r.step for r in written.records]
    assert 0 < len(steps) < 1200
    assert steps == list(range(1, len(steps) + 1))
    assert written.skipped == 0
    latest = read_latest(path)
    assert latest is not None and latest.status == "running"
    assert effective_status(latest) == "lost"  # its writer has exited without a final record
