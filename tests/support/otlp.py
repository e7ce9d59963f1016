"""An OTLP/HTTP collector on 127.0.0.1 that checks every request against the official
schema, the real doeff workflows the exporter tests run in this process, and flowd
exporting to a collector."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from doeff import Gather, Get, Spawn, do, slog

from doeff_flow_core import run_workflow
from doeff_flow_core.timeline.otlp import span_id
from doeff_flow_core.timeline.spans import Span, spans_of
from doeff_flow_core.tracefiles.reading import RecordStream
from flowd.index import FRESH, Entry, Index, Update
from tests.support.flowd import Flowd, flowd
from tests.support.otlp_schema import parse_request
from tests.support.otlp_schema import spans_of as otlp_spans
from tests.support.procs import wait_for

WAIT = 30.0

# -- workflows ------------------------------------------------------------------------------


@do
def leaf(name: str) -> Any:
    yield slog("leaf", name=name)
    value = yield Get("k")
    return value


@do
def worker(name: str) -> Any:
    value = yield leaf(name)
    return value * 10


@do
def prepare() -> Any:
    first = yield leaf("first")
    second = yield leaf("second")
    return first + second


@do
def fan_out() -> Any:
    one = yield Spawn(worker("w1"))
    two = yield Spawn(worker("w2"))
    return sum((yield Gather(one, two)))


@do
def outer(gate: threading.Event | None, fail: bool) -> Any:
    ready = yield prepare()
    yield slog("prepared", ready=ready)
    if gate is not None:  # blocked after the "prepared" record, still running
        assert gate.wait(WAIT)
    total = yield fan_out()
    if fail:
        raise ValueError("failed on purpose")
    return ready + total


def run(trace_dir: Path, workflow_id: str, fail: bool = False) -> list[Span]:
    """Run the workflow to its end; the spans its trace holds (as ``flowctl export``)."""
    result = run_workflow(outer(None, fail), workflow_id, trace_dir, store={"k": 1})
    assert result.is_ok() != fail
    return list(spans_of(RecordStream(trace_dir / workflow_id / "trace.jsonl")))


@contextmanager
def held(trace_dir: Path, workflow_id: str) -> Iterator[threading.Event]:
    """The workflow running in a thread, blocked after its "prepared" record until the
    event is set (set on leaving, in any case)."""
    gate = threading.Event()
    program = outer(gate, False)
    thread = threading.Thread(
        target=lambda: run_workflow(program, workflow_id, trace_dir, store={"k": 1})
    )
    thread.start()
    trace = trace_dir / workflow_id / "trace.jsonl"
    try:
        wait_for(lambda: trace.exists() and b"'prepared'" in trace.read_bytes(), what="prepared")
        yield gate
    finally:
        gate.set()
        thread.join(WAIT)


def trace_spans(trace_dir: Path, workflow_id: str) -> list[Span]:
    return list(spans_of(RecordStream(trace_dir / workflow_id / "trace.jsonl")))


def hex_id(span: Span) -> str:
    return span_id(span.workflow_id, span.run, span.span_id)


# -- a collector ----------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    status: int
    resources: list[dict[str, Any]]  # each resource's attributes
    spans: list[Any]  # opentelemetry.proto Span messages


@dataclass
class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: answers each POST with the next of ``statuses``
    (then ``status``), after waiting for ``hold`` to be set when there is one (the first
    ``hold_after`` POSTs excepted)."""

    port: int = 0
    status: int = 200
    statuses: list[int] = field(default_factory=list)
    body: bytes = b"{}"
    hold: threading.Event | None = None
    hold_seconds: float = WAIT
    hold_after: int = 0
    requests: list[Received] = field(default_factory=list)
    arrived: int = 0
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                collector.serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            self.arrived += 1
            hold = self.hold if self.arrived > self.hold_after else None  # None: may change
        if hold is not None:
            hold.wait(self.hold_seconds)
        with self.lock:  # the answer is chosen once it is given
            status = self.statuses.pop(0) if self.statuses else self.status
        try:
            message = parse_request(body)
        except Exception as exc:  # anything the official schema refuses
            self.invalid.append(repr(exc))
            status, message = 400, None
        if message is not None:
            with self.lock:
                self.requests.append(
                    Received(
                        handler.path,
                        {key.lower(): value for key, value in handler.headers.items()},
                        status,
                        [attributes(rs.resource.attributes) for rs in message.resource_spans],
                        otlp_spans(message),
                    )
                )
        payload = self.body if status < 300 else b'{"message": "bad spans"}'
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def taken(self) -> dict[str, Any]:
        """Spans of the requests answered 2xx, by hex span id."""
        with self.lock:
            return {
                span.span_id.hex(): span
                for request in self.requests
                if request.status < 300
                for span in request.spans
            }

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


def attributes(items: Any) -> dict[str, Any]:
    out = {}
    for item in items:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stats(daemon: Flowd) -> dict[str, Any]:
    with daemon.client() as client:
        otlp: dict[str, Any] = client.call("stats")["otlp"]
        return otlp


def count(log: Flowd | str, pattern: str) -> int:
    return len(re.findall(pattern, log if isinstance(log, str) else log.log()))


def exporting(tmp_path: Path, url: str, *options: object) -> AbstractContextManager[Flowd]:
    """flowd indexing ``trace_dir(tmp_path)`` and exporting to ``url``."""
    traces = Path(os.path.realpath(tmp_path)) / "traces"
    return flowd("--root", traces, "--otlp-endpoint", url, *options, state=tmp_path)


def trace_dir(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "traces"
    path.mkdir()
    return path


# -- runs read by an index, and runs whose writer is gone ----------------------------------


def indexed(trace_dir: Path, workflow_id: str) -> tuple[Index, Entry, Update]:
    """A workflow read by a real index from its first record (it appeared while flowd runs)."""
    index = Index()
    root = index.add_root(str(trace_dir), "argument")
    assert root is not None
    entry = index.add_workflow(root, workflow_id)
    assert entry is not None
    return index, entry, index.read_now(entry, FRESH)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def written_by(traces: Path, workflow_id: str, pid: int, stop: int) -> list[bytes]:
    """The records ``[:stop]`` of a run (no terminal one), as if process ``pid`` wrote them;
    the trace holds them."""
    run(traces, workflow_id)
    path = traces / workflow_id / "trace.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()][:stop]
    assert all(record["status"] == "running" for record in records)
    lines = [json.dumps(dict(r, pid=pid, pid_start=None)).encode() + b"\n" for r in records]
    path.write_bytes(b"".join(lines))
    return lines
