"""A run that cannot start cleans up: on a full disk (ENOSPC, a real full tmpfs) or past
the file size limit (EFBIG, ``ulimit -f 0`` in a real subprocess) ``run_workflow`` raises
``TraceDirUnwritable`` naming the reason, closes every descriptor it opened, releases the
writer lock (the same id runs in the same process once there is room), removes the
workflow directory it made, and leaves an existing trace as it was. A disk that fills
after the start stops tracing with one line on stderr; the workflow's result is its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doeff import Get, Put, do, slog

from doeff_flow_core import TraceDirUnwritable, run_workflow, trace_observer
from doeff_flow_core.tracefiles.reading import read_all
from tests.support.procs import python_command, python_env

# The child: argv = trace_dir, how the size limit comes ("ulimit": the shell set it;
# "setrlimit": set here, soft only; "setrlimit-dfl": the same with SIGXFSZ at its
# default). Tries a new workflow id twice, then one with a trace already; prints, per
# attempt, the outcome and the descriptors open before and after; then whether each
# workflow's writer lock is free; then (soft limit lifted) whether the new id runs.
ATTEMPTS = r"""
import fcntl, json, os, resource, signal, sys
from doeff import Put, do
from doeff_flow_core import run_workflow

trace_dir, how = sys.argv[1], sys.argv[2]
if how.startswith("setrlimit"):
    if how == "setrlimit-dfl":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

ran = []

@do
def flow():
    ran.append(True)
    yield Put("n", 1)
    return 7

def fds():
    return sorted(os.listdir("/proc/self/fd"))

def attempt(workflow_id):
    before = fds()
    try:
        result = run_workflow(flow(), workflow_id, trace_dir)
        outcome = ["ok", repr(result.value)]
    except BaseException as exc:
        outcome = [type(exc).__name__, str(exc)]
    return {"id": workflow_id, "outcome": outcome, "leaked": sorted(set(fds()) - set(before))}

def lock_free(workflow_id):
    path = os.path.join(trace_dir, workflow_id, "writer.lock")
    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)

report = {"attempts": [attempt("wf-new"), attempt("wf-new"), attempt("wf-old")]}
report["locks_free"] = {w: lock_free(w) for w in ("wf-new", "wf-old")}
report["ran"] = len(ran)
if how.startswith("setrlimit"):
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    report["after"] = attempt("wf-new")
print(json.dumps(report), flush=True)
"""

TOO_LARGE = "File too large"
NO_SPACE = "No space left on device"


@do
def counting(n: int) -> Any:
    for i in range(n):
        yield slog("tick", i=i)
        yield Put("x", i)
    return (yield Get("x"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (directories as empty markers)."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        found[name + "/" if path.is_dir() else name] = b"" if path.is_dir() else path.read_bytes()
    return found


def old_trace(trace_dir: Path) -> dict[str, bytes]:
    """A workflow with a finished trace already, as a later failed start must leave it."""
    assert run_workflow(counting(3), "wf-old", trace_dir).value == 2
    (trace_dir / "wf-old" / "writer.lock").write_text("1\n")  # another process's, earlier
    return snapshot(trace_dir / "wf-old")


def assert_clean_failures(report: dict[str, Any], reason: str) -> None:
    for attempt in report["attempts"]:
        kind, message = attempt["outcome"]
        assert kind == "TraceDirUnwritable", attempt
        assert message.startswith("cannot write traces under "), attempt
        assert reason in message, attempt
        assert attempt["leaked"] == [], attempt
    assert report["ran"] == 0  # the body never ran
    assert report["locks_free"]["wf-old"] is True


def run_limited(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        command, env=python_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_ulimit_f_0_is_trace_dir_unwritable_with_nothing_left(tmp_path: Path) -> None:
    trace_dir = tmp_path / "traces"
    before = old_trace(trace_dir)
    # The shell's limit, as a user sets it; output goes to pipes (files would be limited).
    script = " ".join(f"'{part}'" for part in python_command(ATTEMPTS, [trace_dir, "ulimit"]))
    report = run_limited(["bash", "-c", f"ulimit -f 0 && exec {script}"])
    assert_clean_failures(report, TOO_LARGE)
    assert "ulimit -f" in report["attempts"][0]["outcome"][1]
    assert not (trace_dir / "wf-new").exists()  # the directory it made is gone
    assert report["locks_free"]["wf-new"] is None
    assert snapshot(trace_dir / "wf-old") == before


def test_a_soft_limit_set_in_the_process_then_lifted_lets_the_same_id_run(
    tmp_path: Path,
) -> None:
    trace_dir = tmp_path / "traces"
    before = old_trace(trace_dir)
    report = run_limited(python_command(ATTEMPTS, [trace_dir, "setrlimit"]))
    assert_clean_failures(report, TOO_LARGE)
    assert snapshot(trace_dir / "wf-old") == before
    # Not WorkflowBusy: the failed attempts released the lock and closed their files.
    assert report["after"]["outcome"] == ["ok", "7"]
    assert report["after"]["leaked"] == []
    assert read_all(trace_dir / "wf-new" / "trace.jsonl").records[-1].status == "completed"


def test_sigxfsz_at_its_default_kills_the_process_at_the_first_write(tmp_path: Path) -> None:
    # Python ignores SIGXFSZ from its start, so a write past the limit fails with EFBIG
    # (above). A program that puts SIGXFSZ back to its default is killed by the kernel at
    # its first such write, before any code of its own can react: the writer leaves that
    # choice to the program.
    trace_dir = tmp_path / "traces"
    done = subprocess.run(
        python_command(ATTEMPTS, [trace_dir, "setrlimit-dfl"]),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGXFSZ, (done.returncode, done.stderr)
    assert done.stdout == ""


# -- a real full filesystem ------------------------------------------------------------


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except FileNotFoundError:
        return False
    return done.returncode == 0


def fill(where: Path, leave: int = 0) -> Path:
    """Fill the filesystem at ``where`` but ``leave`` bytes (whole pages on tmpfs)."""
    stats = os.statvfs(where)
    filler = where / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of its own (needs the right to mount; skipped without it)."""
    where = tmp_path / "disk"
    if not mount_tmpfs(where, "64k"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("entry", ["run_workflow", "trace_observer"])
def test_a_full_disk_is_trace_dir_unwritable_with_nothing_left(
    small_disk: Path, entry: str
) -> None:
    trace_dir = small_disk / "traces"
    before = old_trace(trace_dir)
    filler = fill(small_disk)
    fds = fd_count()
    for workflow_id in ("wf-new", "wf-new", "wf-old"):
        with pytest.raises(TraceDirUnwritable) as info:
            if entry == "run_workflow":
                run_workflow(counting(3), workflow_id, trace_dir)
            else:
                with trace_observer(workflow_id, trace_dir):
                    pytest.fail("the body ran")
        assert NO_SPACE in str(info.value)
        assert fd_count() == fds
    assert not (trace_dir / "wf-new").exists()
    assert snapshot(trace_dir / "wf-old") == before
    # Room again: both ids run in this same process (no lock was left held).
    filler.unlink()
    assert run_workflow(counting(3), "wf-new", trace_dir).value == 2
    assert run_workflow(counting(3), "wf-old", trace_dir).value == 2
    assert fd_count() == fds


def test_a_full_disk_leaves_no_trace_dir_it_made(small_disk: Path) -> None:
    fill(small_disk)
    with pytest.raises(TraceDirUnwritable, match=NO_SPACE):
        run_workflow(counting(3), "wf", small_disk / "made" / "traces")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_disk_that_fills_mid_run_stops_tracing_not_the_workflow(
    small_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    trace_dir = small_disk / "traces"
    fill(small_disk, leave=2 * 4096)  # a page for the lock, one for the trace
    result = run_workflow(counting(3000), "wf", trace_dir)
    assert result.value == 2999
    assert result.error is None
    stderr = capfd.readouterr().err
    stopped = [line for line in stderr.splitlines() if "tracing to" in line]
    assert len(stopped) == 1, stderr
    assert NO_SPACE in stopped[0] and "the workflow continues untraced" in stopped[0]
    written = read_all(trace_dir / "wf" / "trace.jsonl")
    steps = [record.step for record in written.records]
    assert steps and steps == list(range(1, len(steps) + 1))
    # The next run, with room again, appends after the torn end.
    (small_disk / "filler").unlink()
    assert run_workflow(counting(3), "wf", trace_dir).value == 2
    assert read_all(trace_dir / "wf" / "trace.jsonl").records[-1].status == "completed"


def test_a_read_only_filesystem_is_trace_dir_unwritable(tmp_path: Path) -> None:
    where = tmp_path / "ro"
    if not mount_tmpfs(where, "64k"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        done = subprocess.run(
            ["mount", "-o", "remount,ro", str(where)], capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr
        fds = fd_count()
        with pytest.raises(TraceDirUnwritable, match="Read-only file system"):
            run_workflow(counting(3), "wf", where / "traces")
        assert fd_count() == fds
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
