"""Hostile files in a trace directory: links to files and directories outside it, FIFOs,
devices, a sparse 1 TiB trace, a directory where a file should be, a 100 MB line, another
user's files. Each case is a workflow directory of its own, beside one good workflow.

Three parts meet them:

- the writer (``run_workflow`` in a subprocess): a link, FIFO, device, directory or
  another user's directory where its files should be, or a trace directory others can
  write without the sticky bit, is refused (``TraceDirUnwritable``) before the workflow
  runs; the files outside are left as they were;
- flowctl, every command (``ps``, ``history``, ``history --follow``, ``watch``,
  ``export``, ``prune``), reading the files itself and through flowd;
- flowd indexing the directory: pinged all along (its worst latency while it indexes and
  after), asked ``ps``/``get``/``history`` for every case, then stopped with SIGTERM.

Counted: hangs (a command past its timeout, a follower that does not stop on Ctrl-C, a
ping unanswered), crashes (exit 70, an exit code flowctl does not document, a traceback,
flowd dying or answering -32603), files outside read (a secret marker they hold showing
up in any output) or written (their bytes, mode or mtime changed), trace files changed
by anything but prune and the writer, and listings that lose the good workflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import PY, ROOT, env, rss_kib, tempdir

from tests.support.rpc import Client

HANG = 20.0  # a one-shot command, a ping, a request: longer than this is a hang
FOLLOW = (3.0, 2.0)  # how long a follower runs before it is sent Ctrl-C (full, quick)
READY = 60.0  # flowd answers its first ping within this, or it hangs
WORKERS = 4
TIB = 1 << 40
LONG_LINE = 100 * 1024 * 1024
NOBODY = 65534
GOOD = "good"
ALL = "(all)"  # the case of a command about the whole directory
FORMATS = ("chrome", "svg", "otlp")
# flowctl's documented exit codes (flowctl/exitcodes.py); 70 is its internal error.
DOCUMENTED = {0, 1, 2, 3, 4, 5, 73, 130}
INTERNAL = 70
RPC_CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004}
KEEP = 64 * 1024  # bytes of a command's output kept for messages

# The tiny doeff program the writer runs. argv: trace_dir workflow_id [max_trace_bytes]
# Prints one JSON line: the outcome, whether the body ran, the error.
WRITER = r"""
import json, sys
from doeff import Get, Put, do
from doeff_flow_core import TraceDirUnwritable, run_workflow

ran = []

@do
def flow():
    ran.append(True)
    yield Put("n", 1)
    v = yield Get("n")
    return v + 1

limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
try:
    result = run_workflow(flow(), sys.argv[2], sys.argv[1], max_trace_bytes=limit)
except TraceDirUnwritable as exc:
    out = {"outcome": "refused", "error": str(exc)}
except Exception as exc:
    out = {"outcome": "raised", "error": f"{type(exc).__name__}: {exc}"}
else:
    out = {"outcome": "ran" if result.is_ok() else "failed", "error": repr(result.error)}
out["ran"] = bool(ran)
print(json.dumps(out))
"""


# -- the cases ---------------------------------------------------------------------------


@dataclass
class Ctx:
    """Where one copy of the cases is built: the trace directory and, beside it, the
    directory outside that the links lead to."""

    traces: Path
    outside: Path
    token: str

    def marker(self, case: str) -> str:
        return f"secret{self.token}-{case}"

    def needle(self) -> bytes:
        """What every marker starts with."""
        return f"secret{self.token}-".encode()

    def record(self, case: str, status: str = "completed", secret: bool = False) -> bytes:
        """One valid record, terminal by default; a secret one carries the case's marker
        in every text field a reader shows."""
        text = self.marker(case) if secret else "fine"
        record = {
            "workflow_id": case,
            "step": 1,
            "status": status,
            "current_effect": f"Get('{text}')",
            "trace": [{"function": text, "file": "/w.py", "line": 3, "code": f"yield {text}"}],
            "started_at": "2026-01-01T00:00:00.000+00:00",
            "updated_at": "2026-01-01T00:00:01.000+00:00",
            "error": text if status == "failed" else None,
            "result": repr(text) if status == "completed" else None,
            "last_slog": {"msg": text, "fields": {"k": text}},
            "task": None,
            "pid": 1,
            "host": "elsewhere",
            "run": "r" + self.token,
        }
        return json.dumps(record).encode() + b"\n"

    def secret_file(self, name: str, case: str) -> Path:
        """A file outside holding records with the case's marker (three runs' worth)."""
        path = self.outside / name
        path.write_bytes(b"".join(self.record(case, "running", True) for _ in range(2)))
        with path.open("ab") as out:
            out.write(self.record(case, "completed", True))
        return path


def _mkdir(ctx: Ctx, case: str) -> Path:
    directory = ctx.traces / case
    directory.mkdir(mode=0o700)
    return directory


def _good_trace(ctx: Ctx, case: str) -> Path:
    directory = _mkdir(ctx, case)
    (directory / "trace.jsonl").write_bytes(ctx.record(case))
    return directory


def link_trace(ctx: Ctx, case: str) -> str | None:
    os.symlink(ctx.secret_file(f"{case}.jsonl", case), _mkdir(ctx, case) / "trace.jsonl")
    return None


def link_part(ctx: Ctx, case: str) -> str | None:
    directory = _good_trace(ctx, case)
    os.symlink(ctx.secret_file(f"{case}.jsonl", case), directory / "trace.jsonl.1")
    return None


def link_lock(ctx: Ctx, case: str) -> str | None:
    directory = _good_trace(ctx, case)
    victim = ctx.outside / f"{case}.lock"
    victim.write_text(f"4242 {ctx.marker(case)}\n")
    os.symlink(victim, directory / "writer.lock")
    return None


def link_dir(ctx: Ctx, case: str) -> str | None:
    victim = ctx.outside / f"{case}-wf"
    victim.mkdir()
    ctx.secret_file(f"{case}-wf/trace.jsonl", case)
    (victim / "writer.lock").write_text(f"4242 {ctx.marker(case)}\n")
    os.symlink(victim, ctx.traces / case, target_is_directory=True)
    return None


def fifo_trace(ctx: Ctx, case: str) -> str | None:
    os.mkfifo(_mkdir(ctx, case) / "trace.jsonl", 0o600)
    return None


def fifo_lock(ctx: Ctx, case: str) -> str | None:
    os.mkfifo(_good_trace(ctx, case) / "writer.lock", 0o600)
    return None


def zero_trace(ctx: Ctx, case: str) -> str | None:
    os.symlink("/dev/zero", _mkdir(ctx, case) / "trace.jsonl")
    return None


def chardev_trace(ctx: Ctx, case: str) -> str | None:
    directory = _mkdir(ctx, case)
    try:
        os.mknod(directory / "trace.jsonl", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except OSError as exc:
        return f"mknod: {exc.strerror}"
    return None


def _sparse(ctx: Ctx, case: str, start: bool, end: bool) -> str | None:
    path = _mkdir(ctx, case) / "trace.jsonl"
    record = ctx.record(case)
    with path.open("wb") as out:
        if start:
            out.write(record)
    try:
        os.truncate(path, TIB)
        if end:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\n" + record, TIB - len(record) - 1)
            finally:
                os.close(fd)
    except OSError as exc:
        return f"a 1 TiB sparse file: {exc.strerror}"
    return None


def sparse_start(ctx: Ctx, case: str) -> str | None:
    return _sparse(ctx, case, start=True, end=False)


def sparse_end(ctx: Ctx, case: str) -> str | None:
    return _sparse(ctx, case, start=False, end=True)


def sparse_both(ctx: Ctx, case: str) -> str | None:
    return _sparse(ctx, case, start=True, end=True)


def dir_trace(ctx: Ctx, case: str) -> str | None:
    (_mkdir(ctx, case) / "trace.jsonl").mkdir()
    return None


_FILLER = b"x" * (1 << 20)


def _filler(out: Any) -> None:
    for _ in range(LONG_LINE // len(_FILLER)):
        out.write(_FILLER)


def long_line(ctx: Ctx, case: str) -> str | None:
    """A 100 MB line with no newline in it, then a good record."""
    with (_mkdir(ctx, case) / "trace.jsonl").open("wb") as out:
        _filler(out)
        out.write(b"\n" + ctx.record(case))
    return None


def long_tail(ctx: Ctx, case: str) -> str | None:
    """A good record, then 100 MB with no newline at all (an endless torn line)."""
    with (_mkdir(ctx, case) / "trace.jsonl").open("wb") as out:
        out.write(ctx.record(case))
        _filler(out)
    return None


def foreign(ctx: Ctx, case: str) -> str | None:
    """A workflow directory and its files owned by another user."""
    if os.geteuid() != 0:
        return "chown needs root"
    directory = _good_trace(ctx, case)
    (directory / "writer.lock").write_text("4242\n")
    for path in (directory, directory / "trace.jsonl", directory / "writer.lock"):
        os.chown(path, NOBODY, NOBODY)
    return None


Builder = Callable[[Ctx, str], "str | None"]

# name, builder, in --quick, what the writer must do there: "refuse", or "any" (it may run
# or refuse, but never hang, crash or touch what is outside)
CASES: list[tuple[str, Builder, bool, str]] = [
    ("link-trace", link_trace, True, "refuse"),
    ("link-part", link_part, False, "any"),
    ("link-lock", link_lock, False, "refuse"),
    ("link-dir", link_dir, True, "refuse"),
    ("fifo-trace", fifo_trace, True, "refuse"),
    ("fifo-lock", fifo_lock, False, "refuse"),
    ("zero-trace", zero_trace, False, "refuse"),
    ("chardev-trace", chardev_trace, False, "refuse"),
    ("sparse-start", sparse_start, False, "any"),
    ("sparse-end", sparse_end, True, "any"),
    ("sparse-both", sparse_both, False, "any"),
    ("dir-trace", dir_trace, False, "refuse"),
    ("long-line", long_line, True, "any"),
    ("long-tail", long_tail, False, "any"),
    ("foreign", foreign, False, "refuse"),
]


def build(base: Path, names: Sequence[str], template: Path, token: str) -> tuple[Ctx, list[str]]:
    """A trace directory under ``base`` holding the good workflow and the cases ``names``
    (those that cannot be made here are left out and returned with the reason)."""
    base.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(base / "traces", base / "outside", token)
    ctx.traces.mkdir(mode=0o700)
    ctx.outside.mkdir(mode=0o700)
    shutil.copytree(template, ctx.traces / GOOD)
    builders = {name: builder for name, builder, _, _ in CASES}
    skipped = []
    for name in names:
        reason = builders[name](ctx, name)
        if reason is not None:
            shutil.rmtree(ctx.traces / name, ignore_errors=True)
            skipped.append(f"{name} ({reason})")
    return ctx, skipped


# -- looking at what is there ------------------------------------------------------------

Snapshot = dict[str, tuple[Any, ...]]


def snapshot(top: Path, digest: bool) -> Snapshot:
    """Every entry under ``top`` by ``lstat`` (no link followed, nothing but small regular
    files read): kind, mode, owner, size, mtime, inode, link target, and the bytes'
    digest when ``digest``."""
    found: Snapshot = {}
    for directory, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            extra: Any = ""
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif digest and stat.S_ISREG(st.st_mode) and st.st_size < (1 << 24):
                extra = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            found[path] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ino, extra)
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


class Drain(threading.Thread):
    """Reads a pipe to its end: keeps its start and end, counts its bytes, and looks for
    the secret marker across chunk boundaries."""

    def __init__(self, pipe: Any, needle: bytes) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.needle = needle
        self.head = b""
        self.tail = b""
        self.size = 0
        self.found: set[str] = set()

    def run(self) -> None:
        carry = b""
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.pipe.read1(1 << 20):
                self.size += len(chunk)
                if len(self.head) < KEEP:
                    self.head += chunk[: KEEP - len(self.head)]
                self.tail = (self.tail + chunk)[-KEEP:]
                self.found |= markers(carry + chunk, self.needle)
                carry = chunk[-200:]

    def text(self) -> bytes:
        return self.head if self.size <= KEEP else self.head[:2000] + b"..." + self.tail[-4000:]


def markers(data: bytes, needle: bytes) -> set[str]:
    """The cases whose marker appears in ``data``."""
    found = set()
    for match in re.finditer(re.escape(needle) + rb"([A-Za-z0-9_-]+)", data):
        found.add(match.group(1).decode())
    return found


# -- judging -----------------------------------------------------------------------------


@dataclass
class Event:
    case: str  # a case, or ALL for a command on the whole directory
    kind: str  # hang, crash, read-outside, written-outside, touched, good-hidden, refused...
    what: str


@dataclass
class Figures:
    cases: int = 0
    skipped: list[str] = field(default_factory=list)
    commands: int = 0
    hangs: int = 0
    crashes: int = 0
    read_outside: int = 0
    written_outside: int = 0
    touched: int = 0
    good_hidden: int = 0
    writer_cases: int = 0
    must_refuse: int = 0
    refused: int = 0
    not_refused: int = 0
    pings: int = 0
    unanswered: int = 0
    ready_s: float = -1.0
    ping_indexing_ms: float = -1.0
    ping_after_ms: float = -1.0
    peak_rss_mib: float = 0.0
    sigterm_ms: float = -1.0
    flowd_died: bool = False
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, case: str, kind: str, what: str) -> None:
        self.events.append(Event(case, kind, what))
        if kind == "hang":
            self.hangs += 1
        elif kind == "crash":
            self.crashes += 1
        elif kind == "read-outside":
            self.read_outside += 1
        elif kind == "written-outside":
            self.written_outside += 1
        elif kind == "touched":
            self.touched += 1
        elif kind == "good-hidden":
            self.good_hidden += 1
        elif kind == "not-refused":
            self.not_refused += 1

    def line(self) -> str:
        skipped = (
            f" ({len(self.skipped)} skipped: {', '.join(self.skipped)})" if self.skipped else ""
        )
        return (
            f"files: {self.cases} cases{skipped}, {self.commands} commands: {self.hangs} hangs, "
            f"{self.crashes} crashes, {self.read_outside} reads outside, "
            f"{self.written_outside} writes outside, {self.touched} trace files touched by "
            f"readers, {self.good_hidden} listings without the good workflow; writer refused "
            f"{self.refused}/{self.must_refuse} ({self.not_refused} ran anyway); flowd "
            f"{_ready(self.ready_s)}, worst ping {self.ping_indexing_ms:.0f} ms indexing / "
            f"{self.ping_after_ms:.0f} ms after ({self.unanswered}/{self.pings} unanswered), "
            f"peak RSS {self.peak_rss_mib:.0f} MB, {_stopped(self.sigterm_ms)}, "
            f"{'DIED' if self.flowd_died else 'never died'}"
        )

    def ok(self) -> bool:
        return not (
            self.hangs
            or self.crashes
            or self.read_outside
            or self.written_outside
            or self.touched
            or self.good_hidden
            or self.not_refused
            or self.unanswered
            or self.flowd_died
        )

    def summarize(self) -> None:
        """One problem line per case and kind, cases in order."""
        order = [name for name, *_ in CASES]
        grouped: dict[tuple[str, str], list[str]] = {}
        for event in self.events:
            grouped.setdefault((event.case, event.kind), []).append(event.what)

        def rank(key: tuple[str, str]) -> tuple[int, str]:
            case = key[0].split(" ")[0]
            return (order.index(case) if case in order else -1, key[1])

        for case, kind in sorted(grouped, key=rank):
            whats = list(dict.fromkeys(grouped[(case, kind)]))
            shown = "; ".join(whats[:4]) + (f"; +{len(whats) - 4} more" if len(whats) > 4 else "")
            self.problems.append(f"{case}: {kind} in {shown}")
        self.problems += self.notes


def _ready(seconds: float) -> str:
    return "never ready" if seconds < 0 else f"ready in {seconds:.2f} s"


def _stopped(ms: float) -> str:
    return "no exit on SIGTERM" if ms < 0 else f"SIGTERM to exit {ms:.0f} ms"


@dataclass
class Outcome:
    args: list[str]
    code: int | None
    seconds: float
    hung: bool
    stopped: bool  # a follower sent Ctrl-C at its bound
    stdout: Drain
    stderr: Drain


def command(args: Sequence[str], needle: bytes, bound: float | None = None) -> Outcome:
    """Run ``args`` with no terminal. A follower (``bound``) gets SIGINT after ``bound``
    seconds; anything still running ``HANG`` seconds later (or a one-shot command after
    ``HANG``) has hung and is killed."""
    begun = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        env=env(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    drains = Drain(proc.stdout, needle), Drain(proc.stderr, needle)
    for drain in drains:
        drain.start()
    stopped = hung = False
    try:
        if bound is not None:
            try:
                proc.wait(bound)
            except subprocess.TimeoutExpired:
                stopped = True
                proc.send_signal(signal.SIGINT)
        proc.wait(HANG)
    except subprocess.TimeoutExpired:
        hung = True
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for drain in drains:
        drain.join(5)
    return Outcome(list(args), proc.returncode, time.monotonic() - begun, hung, stopped, *drains)


def label(outcome: Outcome, prefix: str = "") -> str:
    """``flowctl history link-dir --follow``: the command without its paths."""
    args = outcome.args
    if "flowctl" in args:
        args = args[args.index("flowctl") + 1 :]
    words = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--trace-dir", "--socket", "-o"):
            skip = True
        else:
            words.append(arg)
    return f"{prefix}flowctl {' '.join(words)}"


def judge(case: str, outcome: Outcome, prefix: str = "", output: Path | None = None) -> list[Event]:
    """What one flowctl run did wrong: hang, crash, the marker in its output, a broken
    output file, a listing without the good workflow."""
    what = label(outcome, prefix)
    found: list[Event] = []
    if outcome.hung:
        after = f"{HANG:.0f} s after Ctrl-C" if outcome.stopped else f"{HANG:.0f} s"
        return [Event(case, "hang", f"{what} (killed, still running {after})")]
    code = outcome.code
    err = outcome.stderr.text().strip().splitlines()
    last = err[-1][:160].decode(errors="replace") if err else ""
    if code == INTERNAL or b"Traceback" in outcome.stderr.text():
        found.append(Event(case, "crash", f"{what} (exit {code}: {last})"))
    elif code not in DOCUMENTED:
        found.append(Event(case, "crash", f"{what} (undocumented exit {code}: {last})"))
    leaked = outcome.stdout.found | outcome.stderr.found
    if output is not None and output.is_file():
        data = output.read_bytes()
        leaked |= markers(data, outcome.stdout.needle)
        if code == 0:
            try:
                if output.suffix == ".svg":
                    ET.fromstring(data)
                else:
                    json.loads(data)
            except (ValueError, ET.ParseError) as exc:
                found.append(Event(case, "crash", f"{what} (wrote a broken file: {exc})"))
    found += [Event(source, "read-outside", f"{what} (on {case})") for source in sorted(leaked)]
    if outcome.args[-2:] == ["ps", "--json"] and outcome.stdout.size <= KEEP:
        try:
            ids = {row.get("workflow_id") for row in json.loads(outcome.stdout.head)}
        except (ValueError, TypeError, AttributeError):
            found.append(Event(case, "crash", f"{what} (not a JSON array)"))
        else:
            if GOOD not in ids:
                found.append(Event(case, "good-hidden", f"{what} (exit {code}: {last})"))
    return found


# -- flowctl -----------------------------------------------------------------------------

Job = tuple[str, list[str], "float | None", "Path | None"]  # case, argv, bound, output file


def flowctl(ctx: Ctx, *args: str, sock: Path | None = None) -> list[str]:
    daemon = ["--socket", str(sock)] if sock is not None else []
    return [PY, "-m", "flowctl", "--trace-dir", str(ctx.traces), *daemon, *args]


def case_jobs(ctx: Ctx, case: str, out: Path, quick: bool, sock: Path | None = None) -> list[Job]:
    """The commands about one workflow."""
    jobs: list[Job] = [(case, flowctl(ctx, "history", case, sock=sock), None, None)]
    if quick:
        return jobs
    bound = FOLLOW[quick]
    jobs.append((case, flowctl(ctx, "history", case, "--follow", sock=sock), bound, None))
    jobs.append((case, flowctl(ctx, "watch", case, "--exit-on-complete", sock=sock), bound, None))
    for fmt in FORMATS:
        path = out / f"{case}-{'via' if sock else 'files'}.{'svg' if fmt == 'svg' else 'json'}"
        args = flowctl(ctx, "export", case, "--format", fmt, "-o", str(path), sock=sock)
        jobs.append((case, args, None, path))
    return jobs


def dir_jobs(ctx: Ctx, quick: bool, sock: Path | None = None) -> list[Job]:
    """The commands about the whole directory (prune, which removes, comes later)."""
    jobs: list[Job] = [(ALL, flowctl(ctx, "ps", "--json", sock=sock), None, None)]
    if not quick:
        jobs.append((ALL, flowctl(ctx, "ps", sock=sock), None, None))
        jobs.append((ALL, flowctl(ctx, "watch", sock=sock), FOLLOW[quick], None))
        if sock is None:
            jobs.append((ALL, flowctl(ctx, "prune", "--dry-run"), None, None))
    return jobs


def run_jobs(ctx: Ctx, jobs: Sequence[Job], prefix: str = "") -> list[tuple[Outcome, list[Event]]]:
    needle = ctx.needle()
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda job: command(job[1], needle, job[2]), jobs))
    return [
        (outcome, judge(case, outcome, prefix, output))
        for (case, _, _, output), outcome in zip(jobs, outcomes, strict=True)
    ]


def attribute(fig: Figures, base: Path, names: Sequence[str], tail: list[str], t: Any) -> None:
    """A command on the whole directory failed: run it on the good workflow beside each
    case alone, to say which cases make it fail (listed, not counted again)."""
    jobs: list[Job] = []
    for name in names:
        alone, _ = build(base / f"alone-{len(jobs)}-{time.monotonic_ns()}", [name], *t)
        args = [PY, "-m", "flowctl", "--trace-dir", str(alone.traces), *tail]
        bound = FOLLOW[0] if "watch" in tail else None
        jobs.append((name, args, bound, None))
    for _, events in run_jobs(alone, jobs):
        for event in events:
            if event.kind != "read-outside":  # those name their case already
                fig.events.append(Event(event.case, f"{event.kind} (alone with good)", event.what))


def flowctl_part(fig: Figures, base: Path, names: Sequence[str], quick: bool, t: Any) -> None:
    ctx, _ = build(base / "flowctl", names, *t)
    out = base / "flowctl" / "out"
    out.mkdir()
    outside = snapshot(ctx.outside, digest=True)
    inside = snapshot(ctx.traces, digest=False)
    jobs = dir_jobs(ctx, quick)
    for name in [GOOD, *names]:
        jobs += case_jobs(ctx, name, out, quick)
    results = run_jobs(ctx, jobs)
    for what in changed(inside, snapshot(ctx.traces, digest=False)):
        fig.add(_case_of(ctx.traces, what), "touched", f"flowctl read-only commands ({what})")
    if not quick:
        results += run_jobs(ctx, [(ALL, flowctl(ctx, "prune"), None, None)])
    for what in changed(outside, snapshot(ctx.outside, digest=True)):
        fig.add(_case_of(ctx.outside, what), "written-outside", f"flowctl ({what})")
    failed: list[list[str]] = []
    for outcome, events in results:
        fig.commands += 1
        for event in events:
            fig.add(event.case, event.kind, event.what)
        if any(event.case == ALL for event in events):
            tail = outcome.args[outcome.args.index(str(ctx.traces)) + 1 :]
            if tail not in failed:
                failed.append(tail)
    for tail in failed:
        attribute(fig, base, names, tail, t)
    shutil.rmtree(base / "flowctl", ignore_errors=True)


def _case_of(top: Path, path: str) -> str:
    rel = os.path.relpath(path, top).split(os.sep)[0]
    for name, *_ in CASES:
        if rel == name or rel.startswith(name + ".") or rel.startswith(name + "-"):
            return name
    return rel


# -- the writer --------------------------------------------------------------------------


def writer_part(fig: Figures, base: Path, names: Sequence[str], quick: bool, t: Any) -> None:
    ctx, _ = build(base / "writer", names, *t)
    expect = {name: rule for name, _, _, rule in CASES}
    runs: list[tuple[str, Path, str, list[str]]] = [(GOOD, ctx.traces, "ran", [])]
    for name in names:
        if not (ctx.traces / name).exists() and not (ctx.traces / name).is_symlink():
            continue
        extra = ["200"] if name == "link-part" else []  # rotate: .1 (the link) moves on
        runs.append((name, ctx.traces, expect[name], extra))
    shared = base / "writer" / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others can write it, no sticky bit: refused
    runs.append(("shared-dir", shared, "refuse", []))
    if not quick:
        sticky = base / "writer" / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)  # the same with the sticky bit (as /tmp): runs
        runs.append(("sticky-dir", sticky, "ran", []))
    outside = snapshot(ctx.outside, digest=True)
    needle = ctx.needle()

    def one(run: tuple[str, Path, str, list[str]]) -> Outcome:
        name, traces, _, extra = run
        return command([PY, "-c", WRITER, str(traces), name, *extra], needle)

    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(one, runs))
    for (name, _, rule, _), outcome in zip(runs, outcomes, strict=True):
        fig.writer_cases += 1
        fig.commands += 1
        what = "run_workflow"
        if outcome.hung:
            fig.add(name, "hang", f"{what} (killed after {HANG:.0f} s)")
            continue
        for source in sorted(outcome.stdout.found | outcome.stderr.found):
            fig.add(source, "read-outside", f"{what} (run on {name})")
        try:
            result = json.loads(outcome.stdout.head.strip().splitlines()[-1])
        except (ValueError, IndexError):
            last = outcome.stderr.text().strip().splitlines()[-1:] or [b""]
            fig.add(name, "crash", f"{what} (exit {outcome.code}: {last[0][:160]!r})")
            continue
        if b"Traceback" in outcome.stderr.text() or outcome.code != 0:
            fig.add(name, "crash", f"{what} (exit {outcome.code}, traceback on stderr)")
        got = result["outcome"]
        if rule == "refuse":
            fig.must_refuse += 1
            if got == "refused" and not result["ran"]:
                fig.refused += 1
            else:
                fig.add(name, "not-refused", f"{what} ({got}; body ran: {result['ran']})")
        elif rule == "ran" and got != "ran":
            fig.add(name, "crash", f"{what} (a control case: {got}: {result['error'][:160]})")
        if got == "raised":
            fig.add(name, "crash", f"{what} (raised {result['error'][:160]})")
    for what in changed(outside, snapshot(ctx.outside, digest=True)):
        fig.add(_case_of(ctx.outside, what), "written-outside", f"run_workflow ({what})")
    shutil.rmtree(base / "writer", ignore_errors=True)


# -- flowd -------------------------------------------------------------------------------


class Pinger(threading.Thread):
    """Pings flowd on one connection from the moment its socket exists; each ping is
    labelled with the phase it was sent in; samples flowd's RSS meanwhile."""

    def __init__(self, sock: Path, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.proc = proc
        self.phase = "loading"
        self.stop = threading.Event()
        self.latencies: dict[str, float] = {}
        self.first_answer: float | None = None
        self.pings = 0
        self.unanswered: list[str] = []
        self.peak_rss = 0

    def run(self) -> None:
        client: Client | None = None
        while not self.stop.is_set() and self.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, rss_kib(self.proc.pid))
            if client is None:
                try:
                    client = Client(self.sock, timeout=HANG)
                except OSError:
                    self.stop.wait(0.005)
                    continue
            phase = self.phase
            begun = time.monotonic()
            try:
                reply = client.request("ping")
                if "result" not in reply:
                    raise ConnectionError(json.dumps(reply)[:200])
                if self.first_answer is None:
                    self.first_answer = time.monotonic()
            except (OSError, ValueError) as exc:
                if self.proc.poll() is not None or self.stop.is_set():
                    break
                self.unanswered.append(f"ping while {phase}: {exc!r}")
                client.close()
                client = None
            self.pings += 1
            took = time.monotonic() - begun
            self.latencies[phase] = max(self.latencies.get(phase, 0.0), took)
            self.stop.wait(0.01)
        if client is not None:
            client.close()


class Asker:
    """Requests to flowd, one connection reopened after any failure; each reply judged."""

    def __init__(self, fig: Figures, sock: Path, needle: bytes, timeout: float = HANG) -> None:
        self.fig = fig
        self.sock = sock
        self.needle = needle
        self.timeout = timeout
        self.client: Client | None = None
        self.hung: set[str] = set()  # cases asked no more: one request about them hung

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def ask(self, case: str, method: str, params: Any) -> None:
        fig = self.fig
        if case in self.hung:
            return
        fig.commands += 1
        try:
            if self.client is None:
                self.client = Client(self.sock, timeout=self.timeout)
            reply = self.client.request(method, params)
        except (OSError, ValueError) as exc:
            self.close()
            if isinstance(exc, TimeoutError):
                self.hung.add(case)
                fig.add(case, "hang", f"flowd {method} (no answer in {self.timeout:.0f} s)")
            else:
                fig.add(case, "crash", f"flowd {method} ({exc!r})")
            return
        data = json.dumps(reply).encode()
        for source in sorted(markers(data, self.needle)):
            fig.add(source, "read-outside", f"flowd {method} (asked about {case})")
        error = reply.get("error")
        if "result" not in reply:
            if not (isinstance(error, dict) and error.get("code") in RPC_CODES):
                fig.add(case, "crash", f"flowd {method} ({data[:200].decode(errors='replace')})")
            return
        if method == "ps":
            rows = reply["result"].get("workflows", [])
            if not any(row.get("workflow_id") == GOOD for row in rows):
                fig.add(case, "good-hidden", "flowd ps")


def start_flowd(run: Path, roots: Sequence[Path], log_path: Path) -> subprocess.Popen[bytes]:
    """flowd indexing ``roots``, on ``run/flowd.sock``, its stderr in ``log_path``."""
    args = [PY, "-m", "flowd", "--socket", str(run / "flowd.sock")]
    for root in roots:
        args += ["--root", str(root)]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args,
            env=env({"XDG_STATE_HOME": str(run / "state")}),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def stop_flowd(fig: Figures, proc: subprocess.Popen[bytes], case: str) -> float:
    """SIGTERM; the milliseconds flowd took to exit (-1: it had died, or hung and was
    killed)."""
    try:
        if proc.poll() is not None:
            fig.add(case, "crash", f"flowd died (exit {proc.returncode})")
            return -1.0
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(HANG)
        except subprocess.TimeoutExpired:
            fig.add(case, "hang", f"flowd SIGTERM (still running after {HANG:.0f} s)")
            return -1.0
        if code != 0:
            fig.add(case, "crash", f"flowd exit {code} on SIGTERM")
        return (time.monotonic() - sent) * 1000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_log(fig: Figures, log_path: Path, needle: bytes, case: str) -> None:
    log = log_path.read_bytes()
    tracebacks = log.count(b"Traceback (most recent call last)")
    if tracebacks:
        fig.add(case, "crash", f"flowd logged {tracebacks} traceback(s)")
    for source in sorted(markers(log, needle)):
        fig.add(source, "read-outside", "flowd's log")
    errors = [line for line in log.decode(errors="replace").splitlines() if " ERROR " in line]
    fig.notes += [f"{case}: flowd logged: {line[:200]}" for line in errors[:3]]


def wait_ready(sock: Path, proc: subprocess.Popen[bytes], limit: float) -> bool:
    """True once flowd answers a ping (it does once every root is indexed)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with Client(sock, timeout=max(0.1, deadline - time.monotonic())) as client:
                if "result" in client.request("ping"):
                    return True
        except (OSError, ValueError):
            time.sleep(0.01)
    return False


def flowd_part(fig: Figures, base: Path, names: Sequence[str], quick: bool, t: Any) -> None:
    first, _ = build(base / "d1", names, *t)
    second, _ = build(base / "d2", names, *t)  # added with roots.add once flowd is ready
    ctxs = (first, second)
    outside = {c.outside: snapshot(c.outside, digest=True) for c in ctxs}
    inside = {c.traces: snapshot(c.traces, digest=False) for c in ctxs}
    needle = first.needle()
    run = tempdir("fF")
    sock = run / "flowd.sock"
    log_path = base / "flowd.log"
    begun = time.monotonic()
    proc = start_flowd(run, [first.traces], log_path)
    pinger = Pinger(sock, proc)
    pinger.start()
    try:
        while pinger.first_answer is None and proc.poll() is None:
            if time.monotonic() - begun > READY:
                fig.add(ALL, "hang", f"flowd start (no answer in {READY:.0f} s)")
                break
            time.sleep(0.01)
        if pinger.first_answer is not None:
            fig.ready_s = pinger.first_answer - begun
            pinger.phase = "indexing"
            adder = Asker(fig, sock, needle, timeout=HANG * 3)
            adder.ask(ALL, "roots.add", {"path": str(second.traces)})
            adder.close()
            pinger.phase = "after"
            asker = Asker(fig, sock, needle)
            for ctx in ctxs:
                root = str(ctx.traces)
                asker.ask(ALL, "ps", {"root": root})
                for name in [GOOD, *names]:
                    asker.ask(name, "get", {"workflow_id": name, "root": root})
                    asker.ask(name, "history", {"workflow_id": name, "root": root, "last": 1000})
            asker.close()
            out = base / "d-out"
            out.mkdir()
            jobs = dir_jobs(first, quick, sock)
            for name in [GOOD, *names]:
                jobs += case_jobs(first, name, out, quick, sock)
            for _, events in run_jobs(first, jobs, prefix="(via flowd) "):
                fig.commands += 1
                for event in events:
                    fig.add(event.case, event.kind, event.what)
            time.sleep(0.5)
        pinger.stop.set()
        pinger.join(HANG + 5)
        fig.flowd_died = proc.poll() is not None
        fig.sigterm_ms = stop_flowd(fig, proc, ALL)
    finally:
        pinger.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)
    fig.pings = pinger.pings
    fig.unanswered = len(pinger.unanswered)
    for problem in pinger.unanswered[:3]:
        fig.events.append(Event(ALL, "unanswered", f"flowd {problem}"))
    fig.ping_indexing_ms = 1000 * max(
        pinger.latencies.get("loading", 0.0), pinger.latencies.get("indexing", 0.0)
    )
    fig.ping_after_ms = 1000 * pinger.latencies.get("after", 0.0)
    fig.peak_rss_mib = pinger.peak_rss / 1024
    check_log(fig, log_path, needle, ALL)
    for ctx in ctxs:
        for what in changed(outside[ctx.outside], snapshot(ctx.outside, digest=True)):
            fig.add(_case_of(ctx.outside, what), "written-outside", f"flowd ({what})")
        for what in changed(inside[ctx.traces], snapshot(ctx.traces, digest=False)):
            fig.add(_case_of(ctx.traces, what), "touched", f"flowd ({what})")
    shutil.rmtree(base / "d1", ignore_errors=True)
    shutil.rmtree(base / "d2", ignore_errors=True)
    if any(e.case == ALL for e in fig.events):
        with ThreadPoolExecutor(WORKERS) as pool:
            found = pool.map(lambda name: flowd_alone(base, name, t), names)
        for name, events in zip(names, found, strict=True):
            for event in events:
                if event.kind != "read-outside":
                    fig.events.append(Event(name, f"{event.kind} (alone with good)", event.what))


def flowd_alone(base: Path, name: str, t: Any) -> list[Event]:
    """flowd on the good workflow and one case: started, asked, stopped. Says which cases
    made flowd fail on the whole directory."""
    probe = Figures()
    ctx, _ = build(base / f"alone-flowd-{name}", [name], *t)
    run = tempdir("fF")
    log_path = base / f"alone-flowd-{name}.log"
    proc = start_flowd(run, [ctx.traces], log_path)
    try:
        if wait_ready(run / "flowd.sock", proc, HANG):
            asker = Asker(probe, run / "flowd.sock", ctx.needle())
            asker.ask(name, "ps", {"root": str(ctx.traces)})
            asker.ask(name, "get", {"workflow_id": name, "root": str(ctx.traces)})
            asker.ask(name, "history", {"workflow_id": name, "root": str(ctx.traces)})
            asker.close()
        elif proc.poll() is None:
            probe.add(name, "hang", f"flowd start (no answer in {HANG:.0f} s)")
        stop_flowd(probe, proc, name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run, ignore_errors=True)
    check_log(probe, log_path, ctx.needle(), name)
    shutil.rmtree(base / f"alone-flowd-{name}", ignore_errors=True)
    return probe.events


# -- the class ---------------------------------------------------------------------------


def _template(base: Path) -> Path:
    """The good workflow: a real trace written by ``run_workflow``."""
    traces = base / "template"
    subprocess.run(
        [PY, "-c", WRITER, str(traces), GOOD], env=env(), capture_output=True, timeout=60
    )
    if not (traces / GOOD / "trace.jsonl").is_file():
        raise RuntimeError("the good workflow could not be written")
    return traces / GOOD


def run(quick: bool = False, seed: int = 0) -> Figures:
    fig = Figures()
    names = [name for name, _, in_quick, _ in CASES if in_quick or not quick]
    base = tempdir("fF")
    try:
        token = f"{seed:x}{os.getpid():x}{time.monotonic_ns() % 10**6:x}"
        t = (_template(base), token)
        _, fig.skipped = build(base / "probe", names, *t)
        shutil.rmtree(base / "probe", ignore_errors=True)
        skipped = {s.split(" ")[0] for s in fig.skipped}
        names = [name for name in names if name not in skipped]
        fig.cases = len(names)
        writer_part(fig, base, names, quick, t)
        flowctl_part(fig, base, names, quick, t)
        flowd_part(fig, base, names, quick, t)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    fig.summarize()
    return fig
