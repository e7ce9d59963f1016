"""Hypothesis-generated corrupt trace files under a few workflow directories: flowctl
(subprocess: ``ps``/``history`` as ``--json`` and text, ``export`` in every format) and a
running flowd (``ps``/``get``/``history`` over the socket, and exporting spans to a local
OTLP receiver) never crash, and count what they skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import PY, Flowd, env, tempdir
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from doeff_flow_core.tracefiles.reading import read_all
from tests.support.rpc import Client

HUGE_LINE = 10 * 1024 * 1024
PARTS = ("trace.jsonl.2", "trace.jsonl.1", "trace.jsonl")  # three files per workflow
FILES_PER_BATCH = 48
# flowctl's documented exit codes for ps, history and export (flowctl/exitcodes.py).
DOCUMENTED = {0, 3, 4, 5}
EXPORT_FORMATS = ("chrome", "otlp", "svg")
# flowd's documented error codes.
RPC_CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004}
SKIPPED = re.compile(rb"(\d+) malformed lines? skipped")

RECORD: dict[str, Any] = {
    "workflow_id": "c-0",
    "step": 1,
    "status": "running",
    "current_effect": "Get('n')",
    "trace": [{"function": "flow", "file": "/w.py", "line": 3, "code": "yield x"}],
    "started_at": "2026-01-01T00:00:00.000+00:00",
    "updated_at": "2026-01-01T00:00:01.000+00:00",
    "error": None,
    "result": None,
    "last_slog": {"msg": "m", "fields": {"i": "1"}},
    "task": None,
    "pid": 1,
    "host": "elsewhere",
    "run": "abc",
    "pid_start": 5,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A record, perhaps with fields of the wrong type, missing, or odd text."""
    record = dict(RECORD)
    # Small steps often: a run from its first record is what flowd exports as spans.
    record["step"] = draw(st.just(1) | st.integers(1, 5) | st.integers(1, 10**6))
    # Stacks that change and runs that end: what makes spans end.
    record["trace"] = [
        {"function": name, "file": "/w.py", "line": line, "code": None}
        for name, line in draw(
            st.lists(st.tuples(st.sampled_from("fgh"), st.integers(1, 3)), max_size=3)
        )
    ]
    record["status"] = draw(st.sampled_from(["running"] * 6 + ["completed", "failed"]))
    for key in draw(st.lists(st.sampled_from(sorted(RECORD)), max_size=3)):
        if draw(st.booleans()):
            record[key] = draw(json_values)
        else:
            record.pop(key, None)
    if draw(st.booleans()):
        record["current_effect"] = draw(st.text(max_size=60))
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(min_value=0, max_value=7))
    if kind == 0:
        return draw(records())
    if kind == 1:
        return draw(st.binary(max_size=300)).replace(b"\n", b"")
    if kind == 2:  # invalid UTF-8 inside an otherwise valid record
        raw = draw(records())
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
            + raw[at:]
        )
    if kind == 3:  # JSON of the wrong shape
        return json.dumps(draw(json_values)).encode()
    if kind == 4:  # NULs, alone or inside a record
        raw = draw(records())
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        return raw[:at] + b"\x00" * draw(st.integers(min_value=1, max_value=64)) + raw[at:]
    if kind == 5:  # a truncated record
        raw = draw(records())
        return raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    if kind == 6:  # deep nesting
        depth = draw(st.integers(min_value=100, max_value=100_000))
        return b"[" * depth + b"]" * draw(st.integers(min_value=0, max_value=depth))
    return draw(records()) + b"\r" + draw(st.sampled_from([b"\xe2\x80\xa8", b"\x1b[2J", b"\x00"]))


@st.composite
def trace_files(draw: st.DrawFn) -> bytes:
    body = draw(st.lists(lines(), max_size=30))
    if draw(st.integers(min_value=0, max_value=49)) == 0:  # a 10 MB line, now and then
        at = draw(st.integers(min_value=0, max_value=len(body)))
        filler = draw(st.sampled_from([b"x", b"\x00", b"{", b"\xff"]))
        body.insert(at, b'{"step": "' + filler * HUGE_LINE + b'"}')
    data = b"\n".join(body)
    newline_at_end = draw(st.booleans())
    if body and newline_at_end:
        data += b"\n"
    return data


def generate(count: int, seed_value: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @seed(seed_value)
    @given(trace_files())
    def collect(data: bytes) -> None:
        found.append(data)

    collect()
    return found[:count]


@dataclass
class Figures:
    files: int = 0
    flowctl_runs: int = 0
    flowctl_crashes: int = 0
    flowd_requests: int = 0
    flowd_crashes: int = 0
    skipped_flowctl: int = 0
    skipped_core: int = 0
    no_valid: int = 0
    spans_received: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"corrupt: {self.files} files, flowctl {self.flowctl_crashes} crashes "
            f"in {self.flowctl_runs} runs, flowd {self.flowd_crashes} crashes in "
            f"{self.flowd_requests} requests, {self.skipped_flowctl} lines skipped by flowctl "
            f"history + {self.no_valid} traces without a valid record "
            f"({self.skipped_core} malformed lines in all), {self.spans_received} spans"
            " exported by flowd"
        )

    def ok(self) -> bool:
        return not (self.flowctl_crashes or self.flowd_crashes) and self.files > 0


def _flowctl(root: Path, args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[bytes]]:
    command = [PY, "-m", "flowctl", "--trace-dir", str(root), *args]
    return args, subprocess.run(command, env=env(), capture_output=True, timeout=120)


def _judge_flowctl(fig: Figures, args: list[str], out: subprocess.CompletedProcess[bytes]) -> None:
    fig.flowctl_runs += 1
    crashed = out.returncode not in DOCUMENTED or b"Traceback" in out.stderr
    if not crashed and out.returncode == 0 and args[0] == "export":
        try:  # what was written is whole: JSON, or well-formed XML
            if args[-1] == "svg":
                ET.fromstring(out.stdout)
            else:
                json.loads(out.stdout)
        except (ValueError, ET.ParseError):
            crashed = True
    if not crashed and "--json" in args and out.returncode != 3:
        try:
            if args[0] == "ps":
                json.loads(out.stdout)
            else:
                for row in out.stdout.split(b"\n"):
                    if row.strip():
                        json.loads(row)
        except ValueError:
            crashed = True
    if crashed:
        fig.flowctl_crashes += 1
        fig.problems.append(
            f"flowctl {' '.join(args)}: exit {out.returncode}: {out.stderr[-300:]!r}"
        )
    if args[0] == "history" and "--json" in args:
        fig.skipped_flowctl += sum(int(m) for m in SKIPPED.findall(out.stderr))
        fig.no_valid += out.stderr.count(b"no valid records")


def _judge_reply(fig: Figures, what: str, reply: dict[str, Any]) -> None:
    fig.flowd_requests += 1
    error = reply.get("error")
    if "result" in reply:
        return
    if isinstance(error, dict) and error.get("code") in RPC_CODES:
        return
    fig.flowd_crashes += 1
    fig.problems.append(f"flowd {what}: {json.dumps(reply)[:300]}")


def _watch(fig: Figures, daemon: Flowd, root: Path) -> None:
    try:
        with Client(daemon.socket, timeout=60) as client:
            _judge_reply(fig, "roots.add", client.request("roots.add", {"path": str(root)}))
    except (OSError, ValueError) as exc:
        fig.flowd_crashes += 1
        fig.problems.append(f"flowd stopped answering: {exc!r}")


def _flowd_batch(fig: Figures, daemon: Flowd, root: Path, ids: list[str]) -> None:
    try:
        with Client(daemon.socket, timeout=60) as client:
            _judge_reply(fig, "roots.add", client.request("roots.add", {"path": str(root)}))
            _judge_reply(fig, "ps", client.request("ps", {"root": str(root)}))
            for workflow_id in ids:
                params = {"workflow_id": workflow_id, "root": str(root)}
                _judge_reply(fig, f"get {workflow_id}", client.request("get", params))
                params["last"] = 10000  # type: ignore[assignment]
                _judge_reply(fig, f"history {workflow_id}", client.request("history", params))
            _judge_reply(fig, "ping", client.request("ping"))
    except (OSError, ValueError) as exc:
        fig.flowd_crashes += 1
        fig.problems.append(f"flowd stopped answering: {exc!r}")


def run(count: int, seed: int = 0) -> Figures:
    fig = Figures()
    contents = generate(count, seed)
    base = tempdir("fc")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    daemon = Flowd([], extra=["--otlp-endpoint", endpoint])
    try:
        for start in range(0, len(contents), FILES_PER_BATCH):
            batch = contents[start : start + FILES_PER_BATCH]
            root = base / f"batch-{start}"
            root.mkdir(parents=True)
            _watch(fig, daemon, root)  # flowd reads each file from its start, as written
            ids: list[str] = []
            for index, data in enumerate(batch):
                workflow_id = f"c-{index // len(PARTS)}"
                directory = root / workflow_id
                directory.mkdir(parents=True, exist_ok=True)
                if workflow_id not in ids:
                    ids.append(workflow_id)
                path = directory / PARTS[index % len(PARTS)]
                path.write_bytes(data)
                fig.files += 1
                try:
                    fig.skipped_core += read_all(path).skipped
                except Exception as exc:
                    fig.problems.append(f"read_all raised on {path.name}: {exc!r}")
            jobs = [["ps", "--json"], ["ps"]]
            for workflow_id in ids:
                jobs += [["history", workflow_id, "--json", "--last", "10000"]]
                jobs += [["history", workflow_id, "--last", "10000"]]
                jobs += [["export", workflow_id, "--format", fmt] for fmt in EXPORT_FORMATS]
            with ThreadPoolExecutor(2) as pool:
                for args, out in pool.map(_flowctl, [root] * len(jobs), jobs):
                    _judge_flowctl(fig, args, out)
            if not daemon.alive():
                fig.flowd_crashes += 1
                fig.problems.append(f"flowd died: {daemon.log()[-500:]}")
                daemon.start()
            _flowd_batch(fig, daemon, root, ids)
            shutil.rmtree(root, ignore_errors=True)
        if not daemon.alive():
            fig.flowd_crashes += 1
        tracebacks = daemon.tracebacks()
        if tracebacks:
            fig.flowd_crashes += tracebacks
            fig.problems.append(f"flowd logged {tracebacks} traceback(s)")
        fig.spans_received = _Receiver.spans
        if _Receiver.invalid:
            fig.flowd_crashes += _Receiver.invalid
            fig.problems.append(f"flowd sent {_Receiver.invalid} requests that are not JSON")
    finally:
        daemon.cleanup()
        receiver.shutdown()
        receiver.server_close()
        shutil.rmtree(base, ignore_errors=True)
    return fig


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver for flowd's exporter: counts the spans, and the requests
    whose body is not JSON."""

    spans = 0
    invalid = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            count = sum(
                len(scope.get("spans", []))
                for resource in json.loads(body)["resourceSpans"]
                for scope in resource["scopeSpans"]
            )
        except (ValueError, KeyError, TypeError):
            count = -1
        with _Receiver.lock:
            if count < 0:
                _Receiver.invalid += 1
            else:
                _Receiver.spans += count
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass
