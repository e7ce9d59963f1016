"""Crafted text everywhere: N trace records whose every field holds random control
characters (C0, DEL, C1, ESC sequences, OSC 52), bidi overrides, lone surrogates, invalid
and overlong UTF-8 and over-long strings, under a root whose own path is crafted; read by
``flowctl ps``, ``history`` and plain ``watch`` from the files and through flowd, while
flowd exports their spans to a collector that answers with hostile status lines and
bodies, at a URL whose query holds a key (and, in a second flowd, whose userinfo holds a
password). Nothing that reaches flowctl's stdout or stderr, flowd's log or its ``ping`` /
``stats`` answers may hold a raw control character, and no secret of a URL may reach them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import Flowd, env, tempdir

from doeff_flow_core.liveness import this_host
from tests.support.flowctl import flowctl_command
from tests.support.procs import wait_until
from tests.support.rpc import Client

WORKFLOWS = 12  # records are dealt out among this many workflows
COMMAND_TIMEOUT = 60.0
SECRET = "S3CRET-KEY"  # in the collector URL's query, and a password in its userinfo
# What a terminal would act on: C0 (but newline), DEL, C1, bidi controls, lone surrogates.
CONTROLS = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)
PIECES = [
    "\x1b[2J",
    "\x1b]52;c;ZXZpbA==\x07",
    "\x1b]0;title\x1b\\",
    "\x1b[31m",
    "\r",
    "\n",
    "\t",
    "\x00",
    "\x07",
    "\x08",
    "\x7f",
    "\x9b31m",
    "\x9d52;c;eA==\x9c",
    "\u0085",
    "\u202e",
    "\u2066",
    "\u200f",
    "\u2028",
    "\ufeff",
    "\ud800",
    "\udfff",
    "wf-0",
    "ok",
    "é",
    "漢",
]


@dataclass
class Figures:
    records: int = 0
    answers: int = 0
    commands: int = 0
    raw: int = 0
    secrets: int = 0
    worst_ps: float = 0.0
    flowd_died: bool = False
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"crafted: {self.records + self.answers} attacks ({self.records} crafted records, "
            f"{self.answers} hostile collector answers), {self.commands} flowctl runs, "
            f"{self.raw} raw control characters reaching a terminal or log, "
            f"{self.secrets} secrets in logs or answers, worst ps "
            f"{self.worst_ps * 1000:.0f} ms, flowd {'DIED' if self.flowd_died else 'alive'}"
        )

    def ok(self) -> bool:
        return not (self.raw or self.secrets or self.flowd_died or self.problems)


# -- crafted text ------------------------------------------------------------------------------


def crafted(rng: random.Random, longest: int = 400) -> str:
    """A string of hostile pieces, now and then an over-long one."""
    text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 12)))
    if rng.random() < 0.05:
        text += rng.choice(PIECES) * rng.randrange(longest, longest * 50)
    return text


def overlong(rng: random.Random) -> bytes:
    """Bytes that are no UTF-8: overlong forms of ESC and '/', a lone continuation byte, a
    surrogate's encoding, a C1 byte on its own."""
    return rng.choice(
        [b"\xc0\x9b", b"\xc0\xaf", b"\xe0\x80\x9b", b"\x80", b"\xed\xa0\x80", b"\x9b"]
    )


def record(rng: random.Random, name: str, step: int, status: str, pid: int) -> dict[str, Any]:
    frames = [
        {
            "function": crafted(rng),
            "file": "/w/" + crafted(rng) + ".py",
            "line": rng.randrange(1, 999),
            "code": crafted(rng),
            "args": crafted(rng),
            "call": rng.randrange(1, 99),
        }
        for _ in range(rng.randrange(0, 5))
    ]
    data: dict[str, Any] = {
        "workflow_id": rng.choice([name, name + crafted(rng), crafted(rng)]),
        "step": step,
        "status": status,
        "current_effect": crafted(rng),
        "trace": frames,
        "started_at": "2026-01-01T12:00:00.000+00:00",
        "updated_at": f"2026-01-01T12:{step // 60 % 60:02d}:{step % 60:02d}.000+00:00",
        "error": crafted(rng) if status == "failed" else None,
        "result": crafted(rng) if status == "completed" else None,
        "last_slog": {"msg": crafted(rng), "fields": {crafted(rng): crafted(rng)}},
        "task": None,
        "pid": pid,
        "host": this_host(),
        "run": "run-" + name,
        "trace_exact": rng.random() < 0.5,
        "pid_start": None,
    }
    if rng.random() < 0.1:
        data["status"] = crafted(rng)  # no reader takes it as a record
    return data


def line_of(rng: random.Random, data: dict[str, Any]) -> bytes:
    raw = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:  # invalid UTF-8 inside a string
        cut = raw.index(b'"current_effect": "') + 19
        raw = raw[:cut] + overlong(rng) + raw[cut:]
    return raw + b"\n"


def write_traces(
    rng: random.Random,
    roots: list[Path],
    count: int,
    dead: int,
    between: Callable[[], object] = lambda: None,
) -> int:
    """``count`` crafted records over WORKFLOWS workflows in the roots; each trace ends with
    a record that ends the workflow (completed, failed, or running by a process that is
    gone: lost), so a watch of it ends. Each trace's first record is written, then
    ``between`` is called (a reader may find the traces begun), then the rest. The number
    of records written."""
    names = [f"wf-{i:03d}" for i in range(WORKFLOWS)]
    lines: dict[str, list[bytes]] = {name: [] for name in names}
    for _ in range(count):  # one run each, its steps from 1 (the exporter follows it whole)
        name = rng.choice(names)
        status = rng.choice(["running", "running", "running", "completed", "failed"])
        step = len(lines[name]) + 1
        lines[name].append(line_of(rng, record(rng, name, step, status, dead)))
    for number, name in enumerate(names):
        last = ["completed", "failed", "running"][number % 3]
        end = record(rng, name, len(lines[name]) + 1, last, dead)
        end["workflow_id"] = name + crafted(rng)
        lines[name].append(json.dumps(end).encode() + b"\n")
    for part in (slice(0, 1), slice(1, None)):
        for number, name in enumerate(names):
            for root in roots if number % 4 == 0 else roots[:1]:
                (root / name).mkdir(parents=True, exist_ok=True)
                with open(root / name / "trace.jsonl", "ab") as trace:
                    trace.write(b"".join(lines[name][part]))
        if part.start == 0:
            between()
    return count + len(names)


# -- a collector that answers with hostile words -----------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # flowd gave up on an answer (its deadline): nothing to report


class HostileCollector:
    """An HTTP server on 127.0.0.1 answering each POST with a random status, a crafted
    reason phrase (now and then a status line that is no HTTP at all) and a crafted body."""

    def __init__(self, rng: random.Random, retried: int) -> None:
        self.rng = rng
        self.retried = retried  # the first answers say "try again": the batch comes back
        self.lock = threading.Lock()
        self.answered = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.wfile.write(collector.answer())
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self) -> bytes:
        with self.lock:
            self.answered += 1
            rng = self.rng
            if self.answered <= self.retried:
                status = rng.choice([429, 502, 503, 504])
            else:
                status = rng.choice([200, 200, 400, 413, 429, 500, 502, 503, 504])
            reason = crafted(rng).replace("\r", "").replace("\n", "").encode("utf-8", "replace")
            if status == 200 and rng.random() < 0.5:
                partial = {"rejectedSpans": "1", "errorMessage": crafted(rng, 2000)}
                body = json.dumps({"partialSuccess": partial}, ensure_ascii=False).encode(
                    "utf-8", "replace"
                )
            else:
                body = crafted(rng, 2000).encode("utf-8", "replace") + overlong(rng)
            if rng.random() < 0.1:  # a status line that is no HTTP
                return b"\x1b[2JHTTP/9 " + reason + b"\r\n\r\n" + body
        head = f"HTTP/1.1 {status} ".encode() + reason + b"\r\n"
        headers = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head + headers.encode() + body

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces?api_key={SECRET}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- what came out -----------------------------------------------------------------------------


def inspect(fig: Figures, what: str, data: bytes) -> None:
    """Count raw control characters and secrets in ``data`` (undecodable bytes count raw)."""
    text = data.decode("utf-8", "surrogateescape")
    raw = CONTROLS.findall(text)
    if raw:
        fig.raw += len(raw)
        sample = text[max(0, text.find(raw[0]) - 60) :][:120]
        fig.problems.append(f"{what}: {len(raw)} raw controls, e.g. {sample!r}")
    for secret in (SECRET, "pa55word", "#frag"):
        if secret in text:
            fig.secrets += text.count(secret)
            fig.problems.append(f"{what}: {secret!r} shown")


def strings(value: object) -> str:
    """Every string of a decoded JSON answer, one a line (a newline in one counts as raw)."""
    if isinstance(value, str):
        return value.replace("\n", "\x00")
    if isinstance(value, dict):
        return "\n".join(strings(item) for pair in value.items() for item in pair)
    if isinstance(value, list):
        return "\n".join(strings(item) for item in value)
    return ""


def flowctl(fig: Figures, *args: object, stdin: bytes = b"") -> float:
    """Run flowctl ARGS, inspect its output; its time in seconds."""
    begun = time.monotonic()
    try:
        done = subprocess.run(
            flowctl_command(*args),
            env=env(),
            input=stdin,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fig.problems.append(f"flowctl {' '.join(map(str, args[2:]))}: timed out")
        return COMMAND_TIMEOUT
    took = time.monotonic() - begun
    fig.commands += 1
    name = " ".join(map(str, args[2:]))
    inspect(fig, f"flowctl {name} stdout", done.stdout)
    inspect(fig, f"flowctl {name} stderr", done.stderr)
    if b"Traceback" in done.stderr or done.returncode not in (0, 1, 2, 3, 4, 5, 6, 7):
        fig.problems.append(f"flowctl {name}: exit {done.returncode}: {done.stderr[-300:]!r}")
    return took


def commands(
    fig: Figures, where: list[object], names: list[str], rng: random.Random, picks: int
) -> None:
    """Every reading command through ``where`` (files or flowd), on ``picks`` workflows."""
    for _ in range(2):
        fig.worst_ps = max(fig.worst_ps, flowctl(fig, *where, "ps"))
    flowctl(fig, *where, "--verbose", "ps", "--status", "lost")
    for name in rng.sample(names, picks):
        flowctl(fig, *where, "history", name, "--last", "50")
        flowctl(fig, *where, "watch", name, "--status-only", "--exit-on-complete")
        flowctl(fig, *where, "watch", name, "--exit-on-complete")
    flowctl(fig, *where, "watch", "--exit-on-complete")
    flowctl(fig, *where, "shell", stdin=b"ps\nhistory wf-000\nhistory wf-\x1b[2J\n")


def ask(fig: Figures, daemon: Flowd) -> None:
    """The exporter's part of ``ping`` and ``stats``, as a client decodes them."""
    try:
        with Client(daemon.socket, timeout=10) as client:
            answers = [client.call("ping").get("otlp"), client.call("stats")]
    except (OSError, AssertionError, ValueError) as exc:
        fig.problems.append(f"ping/stats unanswered: {exc!r}")
        return
    inspect(fig, "ping/stats", strings(answers).encode("utf-8", "surrogateescape"))


def indexed(daemon: Flowd, workflows: int) -> None:
    """Wait until flowd lists ``workflows`` workflows (each began while it ran)."""

    def listed() -> bool:
        with Client(daemon.socket, timeout=10) as client:
            return len(client.call("ps")["workflows"]) >= workflows

    wait_until(listed, 10, 0.05)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def run(count: int, seed: int = 0, quick: bool = False) -> Figures:
    fig = Figures()
    rng = random.Random(seed)
    picks = 1 if quick else 3
    base = tempdir("fc")
    traces = base / "traces"
    odd = base / "r\x1b[2J\u202e\x9b"  # a root whose path is crafted
    for root in (traces, odd):
        root.mkdir()
    retried = 2 if quick else 5
    collector = HostileCollector(random.Random(seed + 1), retried)
    try:
        # flowd first: traces that appear while it runs are exported from their first record
        daemon = Flowd([traces, odd], extra=["--otlp-endpoint", collector.url])
        try:
            fig.records = write_traces(
                rng, [traces, odd], count, dead_pid(), lambda: indexed(daemon, WORKFLOWS + 3)
            )
            names = sorted(os.listdir(traces))
            commands(fig, ["--trace-dir", traces], names, rng, picks)
            if not quick:  # the crafted root is read through flowd in any case
                commands(fig, ["--trace-dir", odd], sorted(os.listdir(odd)), rng, picks)
            commands(fig, ["--socket", daemon.socket], names, rng, picks)
            wait_until(lambda: collector.answered > retried, 30, 0.05)
            ask(fig, daemon)
            if not daemon.alive():
                fig.flowd_died = True
            daemon.stop()
            for path in sorted(daemon.dir.glob("*.log")):
                inspect(fig, "flowd's log", path.read_bytes())
        finally:
            daemon.cleanup()
        # credentials in the URL: refused, and never repeated
        url = f"http://user:pa55word@127.0.0.1:{collector.port}/v1/traces?k={SECRET}#frag"
        refusing = Flowd([traces], extra=["--otlp-endpoint", url])
        try:
            ask(fig, refusing)
            refusing.stop()
            for path in sorted(refusing.dir.glob("*.log")):
                inspect(fig, "flowd's log (credentials)", path.read_bytes())
        finally:
            refusing.cleanup()
        fig.answers = collector.answered
    finally:
        collector.close()
        shutil.rmtree(base, ignore_errors=True)
    return fig
