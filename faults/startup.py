"""Runs that cannot start: the file size limit (``ulimit -f 0`` from a shell, and a soft
``RLIMIT_FSIZE`` set in the process), a full file system (a 64 KiB tmpfs, when mounting
is permitted), a lock that leads to ``/dev/full`` (a link: refused), a read-only file
system (a read-only tmpfs as root, a 0500 directory otherwise). Each case runs a worker
that tries to start N runs, half with a new workflow id and half with one that has a
trace already.

Counted: attempts, those that raised ``TraceDirUnwritable`` naming the expected reason,
descriptors left open after an attempt (``/proc/self/fd`` before and after, in the
worker), writer locks left held (another open of ``writer.lock`` in the same process
cannot lock it), workflow directories left behind by a start that made them, existing
traces changed, and (with a soft limit) runs of the same id once the limit is lifted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import PY, env, tempdir

# argv: trace_dir attempts how ids ("limited": the limit comes from outside; "setrlimit":
# a soft limit set here and lifted at the end; ids: comma-separated, tried in turn).
# Prints one JSON object.
WORKER = r"""
import fcntl, json, os, resource, sys
from doeff import Get, Put, do
from doeff_flow_core import run_workflow

trace_dir, attempts, how, ids = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ids = ids.split(",")
if how == "setrlimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

ran = []

@do
def flow():
    ran.append(1)
    yield Put("n", 1)
    return (yield Get("n"))

def fds():
    return set(os.listdir("/proc/self/fd"))

def lock_held(workflow_id):
    path = os.path.join(trace_dir, workflow_id, "writer.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file (or a link): nothing this process could hold
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)

results = []
for i in range(attempts):
    workflow_id = ids[i % len(ids)]
    before = fds()
    try:
        run_workflow(flow(), workflow_id, trace_dir)
        outcome = ["ok", ""]
    except BaseException as exc:
        outcome = [type(exc).__name__, str(exc)]
    results.append({
        "id": workflow_id, "outcome": outcome, "leaked": len(fds() - before),
        "held": lock_held(workflow_id),
    })
report = {"results": results, "ran": len(ran)}
report["new_left"] = os.path.exists(os.path.join(trace_dir, "wf-new"))
if how == "setrlimit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    try:
        report["after"] = run_workflow(flow(), "wf-new", trace_dir).value
    except BaseException as exc:
        report["after"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report), flush=True)
"""

# The existing workflow the attempts must leave as it was.
PREPARE = r"""
import sys
from doeff import Put, do
from doeff_flow_core import run_workflow

@do
def flow():
    yield Put("n", 1)
    return 1

run_workflow(flow(), "wf-old", sys.argv[1])
"""

TOO_LARGE = "File too large"
NO_SPACE = "No space left on device"


@dataclass
class Figures:
    attempts: int = 0
    refused: int = 0  # TraceDirUnwritable naming the expected reason
    leaked_fds: int = 0
    locks_held: int = 0
    dirs_left: int = 0
    traces_changed: int = 0
    bodies_ran: int = 0
    reruns_ok: int = 0
    reruns: int = 0
    cases: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        skipped = f", skipped: {' '.join(self.skipped)}" if self.skipped else ""
        return (
            f"startup: {self.refused}/{self.attempts} refused with TraceDirUnwritable naming "
            f"the reason ({' '.join(self.cases)}), {self.leaked_fds} fds leaked, "
            f"{self.locks_held} locks left held, {self.dirs_left} half-made dirs left, "
            f"{self.traces_changed} existing traces changed, {self.bodies_ran} bodies ran, "
            f"same id after the limit lifted: {self.reruns_ok}/{self.reruns}{skipped}"
        )

    def ok(self) -> bool:
        return (
            self.attempts > 0
            and self.refused == self.attempts
            and not (self.leaked_fds or self.locks_held or self.dirs_left)
            and not (self.traces_changed or self.bodies_ran)
            and self.reruns_ok == self.reruns
            and not self.problems
        )


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): b"" if p.is_dir() or p.is_symlink() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def _prepare(trace_dir: Path) -> None:
    done = subprocess.run(
        [PY, "-c", PREPARE, str(trace_dir)], env=env(), capture_output=True, timeout=60
    )
    if done.returncode:
        raise RuntimeError(f"could not write the existing trace: {done.stderr[-500:]!r}")


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0
    return False


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)


def _fill(where: Path) -> None:
    stats = os.statvfs(where)
    with open(where / "filler", "wb") as out, contextlib.suppress(OSError):
        out.write(b"\0" * (stats.f_bavail * stats.f_frsize))


@contextlib.contextmanager
def _case(base: Path, name: str, fig: Figures) -> Iterator[Path | None]:
    """The trace directory of case ``name``, set up (an existing ``wf-old`` in it), or
    None when this machine cannot make it."""
    where = base / name
    trace_dir = where / "traces"
    mounted = False
    try:
        if name == "tmpfs":
            if not _mount(where, "size=64k,mode=0700"):
                fig.skipped.append("tmpfs (mount not permitted)")
                yield None
                return
            mounted = True
            _prepare(trace_dir)
            _fill(where)
        elif name == "readonly":
            if os.geteuid() == 0:
                if not _mount(where, "size=64k,mode=0700"):
                    fig.skipped.append("readonly (mount not permitted)")
                    yield None
                    return
                mounted = True
                _prepare(trace_dir)
                subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
            else:
                _prepare(trace_dir)
                trace_dir.chmod(0o500)
                (trace_dir / "wf-old").chmod(0o500)
        else:
            _prepare(trace_dir)
            if name == "devfull":
                lock = trace_dir / "wf-old" / "writer.lock"
                lock.unlink()
                lock.symlink_to("/dev/full")
        yield trace_dir
    finally:
        if mounted:
            _umount(where)
        elif name == "readonly" and trace_dir.exists():
            trace_dir.chmod(0o700)
            with contextlib.suppress(OSError):
                (trace_dir / "wf-old").chmod(0o700)


def _expected(name: str) -> str:
    return {
        "ulimit": TOO_LARGE,
        "setrlimit": TOO_LARGE,
        "tmpfs": NO_SPACE,
        "devfull": "symbolic link",
        "readonly": "Read-only file system" if os.geteuid() == 0 else "Permission denied",
    }[name]


def _run_worker(name: str, trace_dir: Path, attempts: int) -> dict[str, Any]:
    how = "setrlimit" if name == "setrlimit" else "limited"
    # A link where the lock should be: only the workflow that has it is tried.
    ids = "wf-old" if name == "devfull" else "wf-new,wf-old"
    command = [PY, "-c", WORKER, str(trace_dir), str(attempts), how, ids]
    if name == "ulimit":  # as a user sets it; the output goes to a pipe, not a file
        command = ["bash", "-c", f"ulimit -f 0 && exec {shlex.join(command)}"]
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"worker ended {done.returncode}: {done.stderr[-500:]!r}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def run(attempts: int, seed: int = 0) -> Figures:
    """Each case, ``attempts`` starts (``seed`` unused: the cases are not random)."""
    del seed
    fig = Figures()
    base = tempdir("fst")
    try:
        for name in ("ulimit", "setrlimit", "tmpfs", "devfull", "readonly"):
            with _case(base, name, fig) as trace_dir:
                if trace_dir is None:
                    continue
                fig.cases.append(name)
                before = _snapshot(trace_dir / "wf-old")
                report = _run_worker(name, trace_dir, attempts)
                expected = _expected(name)
                for result in report["results"]:
                    fig.attempts += 1
                    kind, message = result["outcome"]
                    if kind == "TraceDirUnwritable" and expected in message:
                        fig.refused += 1
                    else:
                        fig.problems.append(f"{name}: {result['id']}: {kind}: {message[:200]}")
                    fig.leaked_fds += result["leaked"]
                    fig.locks_held += bool(result["held"])
                fig.bodies_ran += report["ran"]
                if report["new_left"]:
                    fig.dirs_left += 1
                    fig.problems.append(f"{name}: wf-new left behind")
                if _snapshot(trace_dir / "wf-old") != before:
                    fig.traces_changed += 1
                    fig.problems.append(f"{name}: the existing trace changed")
                if "after" in report:
                    fig.reruns += 1
                    if report["after"] == 1:
                        fig.reruns_ok += 1
                    else:
                        fig.problems.append(f"{name}: same id after the limit: {report['after']}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return fig
