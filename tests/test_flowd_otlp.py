"""flowd exporting spans to an OpenTelemetry collector: a real flowd, a real HTTP receiver
on 127.0.0.1 that checks every request against the official OTLP schema, and real doeff
workflows (nested calls, Spawn, slog) run in this process."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import python_command, python_env
from doeff import Gather, Get, Spawn, do, slog
from otlp_schema import parse_request
from otlp_schema import spans_of as otlp_spans
from test_core_spans import PAGES, page_args, paged_records
from test_flowd_support import Flowd, flowd, wait_for

from doeff_flow_core import run_workflow
from doeff_flow_core.records import LiveTrace
from doeff_flow_core.timeline.otlp import span_id, trace_id
from doeff_flow_core.timeline.spans import (
    CALL,
    EFFECT,
    ERROR,
    INCOMPLETE,
    OK,
    Span,
    SpanBuilder,
    SpanEvent,
    spans_of,
)
from doeff_flow_core.tracefiles.reading import RecordStream
from flowd import index as flowd_index
from flowd.errors import OtlpSettingError
from flowd.index import FRESH, LATEST, Entry, Index, Update
from flowd.otlp import exporter as flowd_exporter
from flowd.otlp import feed as span_feed
from flowd.otlp.endpoint import Endpoint, endpoint_from, shown
from flowd.otlp.exporter import SWEEP_SECONDS, Exporter
from flowd.otlp.feed import Replay, SpanFeed, rebuild
from flowd.otlp.health import Failed, Health, Rejected, Sent, answer
from flowd.otlp.post import post
from flowd.otlp.queue import SpanQueue
from flowd.stored import StoredRecord

STATUS_OK, STATUS_ERROR = 1, 2
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
                        [_attributes(rs.resource.attributes) for rs in message.resource_spans],
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


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def _attributes(items: Any) -> dict[str, Any]:
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


# -- spans of real runs ---------------------------------------------------------------------


def test_spans_of_a_run_reach_the_collector_with_names_parents_resource_and_status(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    with exporting(
        tmp_path,
        collector.url,  # no path: /v1/traces
        "--otlp-header",
        "X-Api-Key=s3cret",
        "--otlp-header",
        "x-team = flow",
    ) as daemon:
        expected = run(traces, "wf-ok") + run(traces, "fail-wf", fail=True)
        wait_for(lambda: len(collector.taken()) == len(expected), WAIT, "every span")
        taken = collector.taken()
        assert set(taken) == {hex_id(span) for span in expected}
        for span in expected:
            got = taken[hex_id(span)]
            assert got.name == span.name
            assert got.trace_id.hex() == trace_id(span.workflow_id, span.run)
            parent = (
                ""
                if span.parent_id is None
                else span_id(span.workflow_id, span.run, span.parent_id)
            )
            assert got.parent_span_id.hex() == parent
            assert got.status.code == (STATUS_ERROR if span.status == ERROR else STATUS_OK)
            assert got.start_time_unix_nano == round(span.start * 1e9)
            assert got.end_time_unix_nano == round(span.end * 1e9)
        by_name = {(span.trace_id.hex(), span.name): span for span in taken.values()}
        ok_trace = trace_id("wf-ok", expected[0].run)
        workflow_span = by_name[(ok_trace, "wf-ok")]
        assert workflow_span.parent_span_id == b""
        outer_span = by_name[(ok_trace, "outer")]
        assert outer_span.parent_span_id == workflow_span.span_id
        fan = by_name[(ok_trace, "fan_out")]
        workers = [s for s in taken.values() if s.name == "worker" and s.trace_id.hex() == ok_trace]
        assert len(workers) == 2
        assert all(w.parent_span_id == fan.span_id for w in workers)
        assert all([link.span_id for link in w.links] == [fan.span_id] for w in workers)
        slogs = [event.name for s in taken.values() for event in s.events]
        assert "prepared" in slogs and "leaf" in slogs
        failed = [s for s in taken.values() if s.name == "fail-wf"]
        assert [s.status.message for s in failed] == ["ValueError: failed on purpose"]

        resources = [r for request in collector.requests for r in request.resources]
        assert {r["service.name"] for r in resources} == {"doeff-flow"}
        assert {r["process.pid"] for r in resources} == {os.getpid()}
        assert {r["host.name"] for r in resources} == {expected[0].host}
        for request in collector.requests:
            assert request.path == "/v1/traces"
            assert request.headers["content-type"] == "application/json"
            assert request.headers["x-api-key"] == "s3cret"
            assert request.headers["x-team"] == "flow"
        assert collector.invalid == []

        # the collector keeps a request before it answers: flowd counts it after (the
        # spans may have gone in more than one batch)
        report = wait_for(
            lambda: (r := stats(daemon))["sent_spans"] == len(expected) and r, WAIT, "counted"
        )
        assert report == {
            "endpoint": collector.url + "/v1/traces",
            "state": "ok",
            "queued": 0,
            "sent_spans": len(expected),
            "dropped_spans": 0,
            "rejected_spans": 0,
            "failed_requests": 0,
            "last_error": None,
        }
        with daemon.client() as client:
            assert client.call("ping")["otlp"] == report
    assert count(daemon, "otlp: exporting spans to http://127.0.0.1") == 1
    assert count(daemon, "took the first") == 1
    assert "s3cret" not in daemon.log()


def test_calls_from_one_line_reach_the_collector_as_spans_of_their_own_with_args(
    tmp_path: Path, collector: Collector
) -> None:
    """A trace whose records carry call ids and args (written whole, then moved in)."""
    traces = trace_dir(tmp_path)
    staged = tmp_path / "staged"
    staged.mkdir()
    records = paged_records(workflow_id="wf-pages")
    (staged / "trace.jsonl").write_text("".join(record.to_json() + "\n" for record in records))
    expected = list(spans_of(records))
    with exporting(tmp_path, collector.url):
        os.rename(staged, traces / "wf-pages")
        wait_for(lambda: len(collector.taken()) == len(expected), WAIT, "every span")
    taken = collector.taken()
    assert set(taken) == {hex_id(span) for span in expected}
    pages = sorted(
        (span for span in taken.values() if span.name == "fetch_page"),
        key=lambda span: span.start_time_unix_nano,
    )
    assert [_attributes(span.attributes)["doeff.args"] for span in pages] == [
        page_args(page) for page in range(PAGES)
    ]
    assert collector.invalid == []


def test_a_collector_down_at_first_gets_the_spans_once_up_and_drops_are_counted(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/traces"
    with exporting(tmp_path, url, "--otlp-queue", 4) as daemon:
        with held(traces, "wf-down") as gate:
            wait_for(lambda: stats(daemon)["state"] == "retrying", WAIT, "a failure")
            gate.set()
        expected = trace_spans(traces, "wf-down")
        assert len(expected) > 4 + 3  # more than the queue and the first batch hold
        # flowd has read the whole run before the collector comes up: each of its spans
        # is queued (the first batch, kept, and a full queue) or dropped
        wait_for(
            lambda: (r := stats(daemon))["queued"] + r["dropped_spans"] == len(expected),
            WAIT,
            "every span queued or dropped",
        )
        wait_for(lambda: stats(daemon)["dropped_spans"] > 0, WAIT, "drops")
        wait_for(lambda: stats(daemon)["failed_requests"] >= 3, WAIT, "retries")
        assert count(daemon, f"otlp: collector unreachable at {url}: ConnectionRefusedError") == 1
        assert count(daemon, r"otlp: queue full \(4 spans, or 200000 spans and events\)") == 1

        up = Collector(port=port)
        try:
            wait_for(lambda: stats(daemon)["queued"] == 0, WAIT, "the queue sent")
            report = stats(daemon)
            taken = up.taken()
            assert report["state"] == "ok"
            assert report["sent_spans"] == len(taken) > 0
            assert report["sent_spans"] + report["dropped_spans"] == len(expected)
            assert set(taken) <= {hex_id(span) for span in expected}
            assert "ConnectionRefusedError" in report["last_error"]
            assert count(daemon, f"otlp: collector reachable again at {url}") == 1
            assert count(daemon, "otlp: collector unreachable") == 1
        finally:
            up.close()


@pytest.mark.parametrize("failures", [[503, 502, 504], [429]])
def test_a_failing_collector_is_retried_with_the_same_batch(
    tmp_path: Path, collector: Collector, failures: list[int]
) -> None:
    traces = trace_dir(tmp_path)
    collector.statuses = list(failures)
    with exporting(tmp_path, collector.url) as daemon:
        expected = run(traces, "wf-retry")
        wait_for(lambda: stats(daemon)["sent_spans"] == len(expected), WAIT, "every span")
        first = [{s.span_id for s in r.spans} for r in collector.requests[: len(failures) + 1]]
        assert [r.status for r in collector.requests[: len(failures) + 1]] == [*failures, 200]
        assert all(ids == first[0] for ids in first)  # the batch kept and sent again
        report = stats(daemon)
        assert report["failed_requests"] == len(failures)
        assert report["sent_spans"] == len(expected)
        assert report["state"] == "ok"
        assert report["last_error"].startswith(f"HTTP {failures[-1]}")
    assert count(daemon, f"otlp: collector unavailable at .*: HTTP {failures[0]}") == 1
    assert count(daemon, "otlp: collector unavailable") == 1
    assert count(daemon, "otlp: collector reachable again") == 1


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "Bad Request"), (500, "Internal Server Error")]
)
def test_a_rejected_batch_is_dropped_counted_and_logged_once(
    tmp_path: Path, collector: Collector, status: int, reason: str
) -> None:
    traces = trace_dir(tmp_path)
    collector.status = status  # a 500 is no reason to try again (OTLP/HTTP)
    with exporting(tmp_path, collector.url) as daemon:
        first = run(traces, "wf-one")
        wait_for(lambda: stats(daemon)["rejected_spans"] == len(first), WAIT, "a rejection")
        second = run(traces, "wf-two")
        total = len(first) + len(second)
        wait_for(lambda: stats(daemon)["rejected_spans"] == total, WAIT, "two rejections")
        report = stats(daemon)
        assert report["sent_spans"] == report["failed_requests"] == report["queued"] == 0
        assert report["state"] == "ok"
        assert report["last_error"] == f'HTTP {status} {reason}: {{"message": "bad spans"}}'
        ids = [s.span_id for r in collector.requests for s in r.spans]
        assert len(ids) == len(set(ids)) == total  # each batch sent once, never again
        assert len(collector.requests) >= 2
    assert count(daemon, "otlp: collector at .* rejected") == 1


@pytest.mark.parametrize(
    ("options", "endpoint", "reason"),
    [
        (["--otlp-endpoint", "ftp://127.0.0.1/x"], "ftp://127.0.0.1/x", "http or https"),
        (["--otlp-endpoint", "http:///v1/traces"], "http:///v1/traces", "no host"),
        (["--otlp-endpoint", "127.0.0.1:4318"], "127.0.0.1:4318", "http or https"),
        (["--otlp-endpoint", "http://h:99999"], "http://h:99999", "not a number from 0 to"),
        (["--otlp-endpoint", "http://[::1"], "http://[::1", "the host is not valid"),
        (
            ["--otlp-endpoint", "http://user:s3cret@h:4318"],
            "http://***@h:4318",
            "credentials in a URL are not sent",
        ),
        (["--otlp-endpoint", "http://u:s3cret@h:99999/"], "http://***@h:99999/", "the port"),
        (
            ["--otlp-endpoint", "http://h:4318", "--otlp-header", "X-Key s3cret"],
            "http://h:4318",
            "not NAME=VALUE",
        ),
        (["--otlp-header", "X-Key=s3cret"], None, "without --otlp-endpoint"),
    ],
)
def test_wrong_settings_leave_flowd_serving_with_the_exporter_invalid(
    tmp_path: Path, options: list[str], endpoint: str | None, reason: str
) -> None:
    traces = trace_dir(tmp_path)
    expected = run(traces, "wf-served")
    with flowd("--root", traces, *options, state=tmp_path) as daemon:
        with daemon.client() as client:
            ping = client.call("ping")
            listed = client.call("ps")["workflows"]
        assert [item["workflow_id"] for item in listed] == ["wf-served"]
        assert ping["otlp"]["state"] == "invalid"
        assert ping["otlp"]["endpoint"] == endpoint
        assert reason in ping["otlp"]["last_error"]
        assert stats(daemon) == ping["otlp"]
        assert ping["otlp"]["sent_spans"] == ping["otlp"]["queued"] == 0
    assert expected
    assert count(daemon, "otlp:") == 1
    assert count(daemon, f"otlp: .*{re.escape(reason)}.*; not exporting spans") == 1
    assert "s3cret" not in daemon.log()


def test_a_slow_collector_holds_up_neither_answers_nor_indexing(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    collector.hold = threading.Event()
    with exporting(tmp_path, collector.url) as daemon:
        expected = run(traces, "wf-slow")
        wait_for(lambda: collector.arrived >= 1, WAIT, "a request in flight")
        with daemon.client() as client:
            # the collector has not answered: flowd answers all the same
            assert [w["workflow_id"] for w in client.call("ps")["workflows"]] == ["wf-slow"]
            assert client.call("stats")["otlp"]["state"] == "idle"
            expected += run(traces, "wf-later")
            wait_for(
                lambda: client.call("get", workflow_id="wf-later")["status"] == "completed",
                WAIT,
                "wf-later indexed",
            )
            client.call("watch", workflow_id="wf-later")
            assert client.trace()["record"]["status"] == "completed"
        assert collector.requests == []  # still held
        collector.hold.set()
        wait_for(lambda: stats(daemon)["sent_spans"] == len(expected), WAIT, "every span")
        assert set(collector.taken()) == {hex_id(span) for span in expected}
        assert stats(daemon)["state"] == "ok"


def test_a_collector_that_times_out_is_retried(tmp_path: Path, collector: Collector) -> None:
    traces = trace_dir(tmp_path)
    collector.hold = threading.Event()  # never set: each request waits hold_seconds
    collector.hold_seconds = 2.0
    with exporting(tmp_path, collector.url, "--otlp-timeout", 0.5) as daemon:
        expected = run(traces, "wf-timeout")
        wait_for(lambda: stats(daemon)["failed_requests"] >= 1, WAIT, "a timeout")
        collector.hold = None
        wait_for(lambda: stats(daemon)["state"] == "ok", WAIT, "an answer in time")
        assert {hex_id(span) for span in expected} <= set(collector.taken())
        assert "TimeoutError" in stats(daemon)["last_error"]
    assert count(daemon, "otlp: collector unreachable at .*: TimeoutError") == 1
    assert count(daemon, "otlp: collector reachable again") == 1


# -- what is exported: what ends while flowd runs -------------------------------------------


def test_a_run_found_mid_way_exports_only_what_ends_later_with_true_starts_and_ids(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    done = run(traces, "wf-done")
    with (
        held(traces, "wf-mid") as gate,
        exporting(tmp_path, collector.url) as daemon,
    ):
        gate.set()
        expected = wait_for(
            lambda: (spans := trace_spans(traces, "wf-mid"))[-1].status == OK and spans,
            WAIT,
            "wf-mid ended",
        )
        # ended before flowd started: prepare and its two leaves (of the root task)
        before = [
            s for s in expected if s.name == "prepare" or (s.name == "leaf" and s.task is None)
        ]
        later = [s for s in expected if s not in before]
        assert len(later) == len(expected) - 3
        wait_for(lambda: stats(daemon)["sent_spans"] >= len(later), WAIT, "the later spans")
        taken = collector.taken()
        assert set(taken) == {hex_id(span) for span in later}
        for span in later:  # the calls open when flowd started: their true start
            assert taken[hex_id(span)].start_time_unix_nano == round(span.start * 1e9)
        assert trace_id("wf-done", done[0].run) not in {s.trace_id.hex() for s in taken.values()}
        assert stats(daemon)["sent_spans"] == len(later)


KILLED_WORKFLOW = """
import asyncio, sys
from doeff import Await, Get, do, slog
from doeff_flow_core import run_workflow

@do
def wait_forever():
    yield slog("waiting")
    yield Await(asyncio.sleep(600))

@do
def main():
    yield Get("k")
    yield wait_forever()

run_workflow(main(), "wf-killed", sys.argv[1], store={"k": 1})
"""


def test_a_killed_workflow_s_open_calls_are_sent_incomplete(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    with exporting(tmp_path, collector.url) as daemon:
        worker = subprocess.Popen(python_command(KILLED_WORKFLOW, [traces]), env=python_env())
        trace = traces / "wf-killed" / "trace.jsonl"
        try:
            wait_for(lambda: trace.exists() and b"Await" in trace.read_bytes(), WAIT, "Await")
            wait_for(lambda: daemon_has(daemon, "wf-killed"), WAIT, "indexed")
        finally:
            worker.kill()
            worker.wait()
        wait_for(lambda: "wf-killed" in {s.name for s in collector.taken().values()}, WAIT, "sent")
        taken = {span.name: span for span in collector.taken().values()}
        assert set(taken) == {"wf-killed", "main", "wait_forever"}
        for span in taken.values():
            assert span.status.code == 0  # unset: it never ended
            assert _attributes(span.attributes)["doeff.incomplete"] is True
        assert [e.name for e in taken["wait_forever"].events] == ["waiting", "Await(...)"]
        # the collector keeps a request before it answers: flowd counts it after
        wait_for(lambda: stats(daemon)["queued"] == 0, WAIT, "the answer counted")
        assert stats(daemon)["sent_spans"] == 3


def daemon_has(daemon: Flowd, workflow_id: str) -> bool:
    with daemon.client() as client:
        rows = client.call("ps")["workflows"]
        return any(row["workflow_id"] == workflow_id for row in rows)


def test_sigterm_sends_what_is_queued_but_not_the_spans_still_open(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    # Three failures, then every request (the one flowd sends when it stops, or a retry
    # it sent before: the stop may come after the backoff) waits for the test, then is
    # taken: the batch is still queued when flowd stops, however late that is.
    collector.statuses = [503, 503, 503]
    collector.hold, collector.hold_after = threading.Event(), 3
    timeout = ("--otlp-timeout", WAIT)  # flowd waits as long as the test for the answer
    with exporting(tmp_path, collector.url, *timeout) as daemon, held(traces, "wf-open"):
        finished = run(traces, "wf-finished")
        ended_before = trace_spans(traces, "wf-open")
        queued = len(finished) + len([s for s in ended_before if s.status != INCOMPLETE])
        wait_for(lambda: stats(daemon)["queued"] == queued, WAIT, "every ended span queued")
        wait_for(lambda: stats(daemon)["failed_requests"] >= 3, WAIT, "three failures")
        daemon.proc.send_signal(signal.SIGTERM)
        # flowd removes its socket, then at once (nothing awaited between) the exporter
        # notes what is queued and stops waiting to retry: only then does the answer come
        wait_for(lambda: not daemon.socket.exists(), WAIT, "flowd stopping")
        collector.hold.set()
        assert daemon.proc.wait(WAIT) == 0  # (no second SIGTERM: that one would kill it)
        assert daemon.stop() == 0
    taken = collector.taken()
    names = {(s.trace_id.hex(), s.name) for s in taken.values()}
    assert {hex_id(span) for span in finished} <= set(taken)
    open_trace = trace_id("wf-open", ended_before[0].run)
    assert (open_trace, "prepare") in names  # ended before SIGTERM: sent
    assert (open_trace, "outer") not in names and (open_trace, "wf-open") not in names
    log = daemon.log()
    assert f"otlp: stopping: {queued} queued spans sent, 0 not sent" in log
    assert log.rstrip().endswith("flowd INFO stopped")


# -- configuration --------------------------------------------------------------------------


def test_the_opentelemetry_environment_variables_are_honoured(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url + "/base/",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=a%20b,x-team=flow",
    }
    with flowd("--root", traces, state=tmp_path, env=env) as daemon:
        expected = run(traces, "wf-env")
        wait_for(lambda: len(collector.taken()) == len(expected), WAIT, "every span")
        assert {r.path for r in collector.requests} == {"/base/v1/traces"}
        assert {r.headers["x-api-key"] for r in collector.requests} == {"a b"}
    assert "(from OTEL_EXPORTER_OTLP_ENDPOINT)" in daemon.log()


def test_without_an_endpoint_ping_has_no_otlp_and_stats_says_null(tmp_path: Path) -> None:
    with flowd(state=tmp_path) as daemon, daemon.client() as client:
        assert "otlp" not in client.call("ping")
        assert client.call("stats") == {"otlp": None}
    assert "otlp" not in daemon.log()


@pytest.mark.parametrize(
    ("option", "environ", "url"),
    [
        ("http://c:4318", {}, "http://c:4318/v1/traces"),
        ("http://c:4318/", {}, "http://c:4318/v1/traces"),
        ("https://c/otlp/traces", {}, "https://c/otlp/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/x"}, "http://c:4318/x/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/t"}, "http://c:4318/t"),
        (
            "http://option",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env/t"},
            "http://option/v1/traces",
        ),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces/t",
            },
            "http://traces/t",
        ),
    ],
)
def test_the_endpoint_url(option: str | None, environ: dict[str, str], url: str) -> None:
    endpoint = endpoint_from(option, [], environ)
    assert endpoint is not None and endpoint.url == url


def test_headers_from_options_replace_those_from_the_environment() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "A=1, b=2%2C3",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=4",
    }
    endpoint = endpoint_from("http://c", ["B=5", "c=x=y"], environ)
    assert endpoint == Endpoint("http://c/v1/traces", (("a", "4"), ("B", "5"), ("c", "x=y")))
    assert endpoint_from(None, [], {}) is None
    with pytest.raises(OtlpSettingError, match="control characters"):
        endpoint_from("http://c", ["a=b\r\nX-Evil: 1"], {})


def test_health_logs_once_per_change_of_the_collectors_condition() -> None:
    health = Health("http://c/v1/traces")
    refused = Failed("ConnectionRefusedError", "ConnectionRefusedError: refused")
    notes = [
        health.record(refused, 5),
        health.record(refused, 5),
        health.drop(3, "10 spans"),
        health.drop(2, "10 spans"),
        health.record(Sent(), 5),
        health.record(Sent(), 5),
        health.record(answer(400, "Bad Request", b"no"), 4),
        health.record(answer(400, "Bad Request", b"no"), 4),
        health.record(answer(200, "OK", b'{"partialSuccess":{"rejectedSpans":"2"}}'), 6),
        health.record(Sent(), 1),
    ]
    said = [note.message if note else None for note in notes]
    assert said == [
        "otlp: collector unreachable at http://c/v1/traces: ConnectionRefusedError; "
        "keeping spans and retrying",
        None,
        "otlp: queue full (10 spans); dropping the oldest spans",
        None,
        "otlp: collector reachable again at http://c/v1/traces, 5 spans sent; "
        "5 dropped meanwhile (queue full)",
        None,
        "otlp: collector at http://c/v1/traces rejected 4 spans: HTTP 400 Bad Request: no; "
        "rejected spans are dropped",
        None,
        None,
        "otlp: collector at http://c/v1/traces accepts spans again",
    ]
    assert health.snapshot(7) == {
        "endpoint": "http://c/v1/traces",
        "state": "ok",
        "queued": 7,
        "sent_spans": 5 + 5 + 4 + 1,
        "dropped_spans": 5,
        "rejected_spans": 4 + 4 + 2,
        "failed_requests": 2,
        "last_error": "partial success",
    }
    for status in (429, 502, 503, 504):  # "try again later", says OTLP/HTTP
        assert isinstance(answer(status, "", b""), Failed)
    for status in (301, 400, 404, 413, 500, 501, 505):  # final: sending again is no use
        assert isinstance(answer(status, "", b""), Rejected)


# -- the span feed, without a daemon --------------------------------------------------------


class Fed:
    """A SpanFeed with its emitted spans and rebuild requests kept."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.replays: list[Replay] = []
        self.feed = SpanFeed(self.spans.extend, self.replays.append)


def indexed(trace_dir: Path, workflow_id: str) -> tuple[Index, Entry, Update]:
    """A workflow read by a real index from its first record (it appeared while flowd runs)."""
    index = Index()
    root = index.add_root(str(trace_dir), "argument")
    assert root is not None
    entry = index.add_workflow(root, workflow_id)
    assert entry is not None
    return index, entry, index.read_now(entry, FRESH)


def trace_lines(trace_dir: Path, workflow_id: str) -> tuple[Entry, list[StoredRecord]]:
    """The workflow's entry, read to its end by an index, and its records."""
    _, entry, update = indexed(trace_dir, workflow_id)
    return entry, update.lines


def ended_after(lines: list[StoredRecord], step: int) -> list[Span]:
    """The spans that records after ``step`` end (what flowd exports when found at it)."""
    builder, out = SpanBuilder(), []
    for line in lines:
        spans = builder.add(LiveTrace.from_dict(json.loads(line.raw)))
        if line.step > step:
            out += spans
    return out


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


def test_a_run_whose_writer_is_gone_is_ended_incomplete_by_a_sweep(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    written_by(traces, "wf-gone", dead_pid(), -1)
    path = traces / "wf-gone" / "trace.jsonl"
    entry, lines = trace_lines(traces, "wf-gone")
    expected = list(spans_of(RecordStream(path)))  # closed at the last record, incomplete
    fed = Fed()
    fed.feed.feed(Update(entry, lines, reset=True))
    before = list(fed.spans)
    assert fed.feed.sweep() == 1
    assert fed.spans == expected
    ended = fed.spans[len(before) :]
    assert {span.status for span in ended} == {INCOMPLETE}
    assert "wf-gone" in {span.name for span in ended}
    assert fed.feed.sweep() == 0  # once
    fed.feed.feed(Update(entry, lines[-2:]))  # read again (a rotation): nothing new
    assert fed.spans == expected


def test_the_feed_emits_each_span_of_a_run_read_from_its_start_once(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    expected = run(traces, "wf-feed")
    entry, lines = trace_lines(traces, "wf-feed")
    fed = Fed()
    fed.feed.feed(Update(entry, lines[:4], reset=True))
    fed.feed.feed(Update(entry, lines[4:]))
    assert fed.spans == expected
    assert len(fed.feed) == 0  # the run ended: nothing kept
    fed.feed.feed(Update(entry, lines[5:]))  # a run met in its middle (step 6): skipped
    assert fed.spans == expected and fed.replays == []


def test_a_run_found_mid_way_is_rebuilt_and_records_read_meanwhile_are_not_fed_twice(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    run(traces, "wf-found")
    entry, lines = trace_lines(traces, "wf-found")
    found = 5  # the "prepared" record: prepare and its leaves ended before it
    fed = Fed()
    fed.feed.feed(Update(entry, [lines[found - 1]], reset=True, complete=False, found=True))
    (replay,) = fed.replays
    assert (replay.run, replay.step) == (lines[0].run, found)
    fed.feed.feed(Update(entry, lines[found : found + 3]))  # read while the rebuild runs
    assert fed.spans == []
    result = rebuild(replay, 100)  # reads the whole trace: past what the index read
    assert result.builder is None and result.last_step == len(lines)
    fed.feed.rebuilt(replay, result)
    fed.feed.feed(Update(entry, lines[found + 3 :]))  # read by the rebuild already
    assert fed.spans == ended_after(lines, found)
    assert {span.name for span in fed.spans} >= {"outer", "fan_out", "worker", "wf-found"}
    assert "prepare" not in {span.name for span in fed.spans}
    again = run(traces, "wf-found")[len(ended_after(lines, 0)) :]  # a second run, appended
    _, both = trace_lines(traces, "wf-found")
    fed.spans.clear()
    fed.feed.feed(Update(entry, both[len(lines) :]))
    assert fed.spans == again
    assert len(fed.feed) == 0


def test_records_waiting_for_rebuilds_are_bounded_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(span_feed, "MAX_WAITING_TOTAL", 10)
    traces = trace_dir(tmp_path)
    fed = Fed()
    found = {}
    for name in ("wf-a", "wf-b"):
        run(traces, name)
        entry, lines = trace_lines(traces, name)
        found[name] = (entry, lines)
        fed.feed.feed(Update(entry, [lines[4]], reset=True, complete=False, found=True))
    (entry_a, lines_a), (entry_b, lines_b) = found["wf-a"], found["wf-b"]
    fed.feed.feed(Update(entry_a, lines_a[5:11]))  # 6 wait: within the bound
    fed.feed.feed(Update(entry_b, lines_b[5:11]))  # 12 in all: wf-b's run is given up
    replay_a, replay_b = fed.replays
    fed.feed.rebuilt(replay_b, rebuild(replay_b, 100))  # too late: ignored
    fed.feed.feed(Update(entry_b, lines_b[11:]))
    assert fed.spans == []
    fed.feed.rebuilt(replay_a, rebuild(replay_a, 100))
    fed.feed.feed(Update(entry_a, lines_a[11:]))
    assert fed.spans == ended_after(lines_a, 5)


def test_a_rebuild_that_fails_skips_the_run_and_a_reset_forgets_it(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    run(traces, "wf-lost")
    entry, lines = trace_lines(traces, "wf-lost")
    fed = Fed()
    fed.feed.feed(Update(entry, [lines[2]], reset=True, complete=False, found=True))
    fed.feed.rebuilt(fed.replays[0], None)  # the trace could not be read
    fed.feed.feed(Update(entry, lines[3:]))
    assert fed.spans == []
    fed.feed.feed(Update(entry, [lines[2]], reset=True, complete=False, found=True))
    fed.feed.feed(Update(entry, lines, reset=True))  # read again from its start
    fed.feed.rebuilt(fed.replays[1], rebuild(fed.replays[1], 100))  # too late: ignored
    assert fed.spans == ended_after(lines, 0)


def test_a_sweep_waits_until_the_index_has_read_a_dead_writer_s_last_records(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    lines = written_by(traces, "wf-late", dead_pid(), 9)
    path = traces / "wf-late" / "trace.jsonl"
    path.write_bytes(b"".join(lines[:3]))
    index, entry, update = indexed(traces, "wf-late")
    fed = Fed()
    fed.feed.feed(update)  # the first 3 records
    with path.open("ab") as trace:  # the writer wrote 6 more, then died; not read yet
        trace.write(b"".join(lines[3:]))
    assert fed.feed.sweep() == 0
    later = index.read_now(entry)
    assert later is not None and len(later.lines) == 6
    fed.feed.feed(later)
    entry.behind = True  # as if one refresh had not read it all
    assert fed.feed.sweep() == 0
    entry.behind = False
    assert fed.feed.sweep() == 1
    assert fed.spans == list(spans_of(RecordStream(path)))  # ended at the 9th record
    assert max(span.last_step for span in fed.spans) == 9


def test_a_run_found_mid_way_is_swept_once_its_writer_dies_after_the_rebuild(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    writer = subprocess.Popen(["sleep", "60"])
    try:
        written_by(traces, "wf-found-dies", writer.pid, 9)
        index, entry, _ = indexed(traces, "wf-found-dies")
        fed = Fed()
        fed.feed.feed(index.read_now(entry, LATEST))  # found when flowd started
        (replay,) = fed.replays
        fed.feed.rebuilt(replay, rebuild(replay, 100))
        assert fed.feed.sweep() == 0  # its writer runs
    finally:
        writer.kill()
        writer.wait()
    assert fed.feed.sweep() == 1  # nothing was read after the rebuild: swept all the same
    path = traces / "wf-found-dies" / "trace.jsonl"
    assert fed.spans == [s for s in spans_of(RecordStream(path)) if s.status == INCOMPLETE]
    assert fed.spans


# -- flowd goes on whatever the exporter meets ---------------------------------------------


def indexed_count(daemon: Flowd) -> int:
    """Workflows indexed (without deriving a status, as ``ps`` does)."""
    with daemon.client() as client:
        return sum(root["workflows"] for root in client.call("roots.list")["roots"])


HUGE_PID = 2**70  # no process can have it: os.kill raises OverflowError


def test_a_record_with_a_pid_no_process_can_have_leaves_flowd_serving(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    with exporting(tmp_path, collector.url) as daemon:
        lines = written_by(tmp_path / "elsewhere", "wf-huge-pid", HUGE_PID, 3)
        (traces / "wf-huge-pid").mkdir()  # appears while flowd runs: read from its start
        (traces / "wf-huge-pid" / "trace.jsonl").write_bytes(b"".join(lines))
        wait_for(lambda: indexed_count(daemon) == 1, WAIT, "indexed")
        time.sleep(3 * SWEEP_SECONDS)  # sweeps meet it
        assert daemon.proc.poll() is None
        with daemon.client() as client:
            assert client.call("ping")["otlp"]["state"] in ("idle", "ok")
    assert count(daemon, "Traceback") == 0
    assert count(daemon, "otlp: ending runs whose writer is gone") <= 1  # not once a sweep


def test_an_exporter_loop_that_fails_logs_once_and_goes_on(
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    traces = trace_dir(tmp_path)
    written_by(traces, "wf-bad", HUGE_PID, 3)
    written_by(traces, "wf-dead", dead_pid(), 3)
    alive = flowd_index.process_alive

    def old_core(pid: int, start: int | None) -> bool:  # as the core was: it raised
        if pid == HUGE_PID:
            raise OverflowError("signed integer is greater than maximum")
        return alive(pid, start)

    monkeypatch.setattr(flowd_index, "process_alive", old_core)
    monkeypatch.setattr(flowd_exporter, "SWEEP_SECONDS", 0.02)
    endpoint = Endpoint(collector.url + "/v1/traces")
    exporter = Exporter(endpoint, Health(endpoint.url))
    feed = exporter.feed
    assert feed is not None
    for workflow_id in ("wf-bad", "wf-dead"):  # the bad one first: the other is still swept
        feed.feed(indexed(traces, workflow_id)[2])
    assert len(feed) == 2

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(exporter.run)
            with anyio.fail_after(WAIT):  # sent, and the sweep failed again and again
                while not collector.taken() or count(caplog.text, "SweepFailed") < 5:
                    await anyio.sleep(0.02)
            await exporter.close(0.1)
            group.cancel_scope.cancel()

    with caplog.at_level(logging.DEBUG, logger="flowd"):
        anyio.run(main)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("otlp: ending runs whose writer is gone: SweepFailed: ")
    assert "wf-bad" in errors[0] and "OverflowError" in errors[0]
    names = {span.name for span in collector.taken().values()}
    assert "wf-dead" in names and "wf-bad" not in names  # wf-bad's run is still open


# -- the export request and the queue, without a daemon ------------------------------------


@contextmanager
def trickling(answer: bytes, every: float) -> Iterator[str]:
    """A receiver on 127.0.0.1 that reads one request, then sends ``answer`` one byte every
    ``every`` seconds (until the client goes); its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += connection.recv(65536)
            try:
                for byte in answer:
                    connection.sendall(bytes([byte]))
                    time.sleep(every)
            except OSError:
                pass  # the client gave up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
    finally:
        thread.join(WAIT)
        listener.close()


def test_a_request_ends_at_its_deadline_however_slowly_the_answer_trickles(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    spans = run(traces, "wf-trickle")
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    with trickling(answer, 0.5) as url:  # the whole answer would take 40 s
        start = time.monotonic()
        outcome = post(Endpoint(url), spans, 1.0)
        took = time.monotonic() - start
    assert isinstance(outcome, Failed) and outcome.reason == "TimeoutError"
    assert outcome.detail == "TimeoutError: no complete answer within 1 s"
    assert 0.9 < took < 3.0


def call_span(span_id: int, events: int) -> Span:
    event = SpanEvent("slog('x')", 0.0, EFFECT)
    return Span("wf", "r", span_id, None, CALL, "f", None, None, None, 0.0, 1.0, OK, 1, 2,
                events=(event,) * events)  # fmt: skip


def test_the_queue_is_bounded_by_spans_and_by_their_events() -> None:
    queue = SpanQueue(limit=10, weight_limit=100)
    assert queue.put([call_span(i, 0) for i in range(12)]) == 2  # 12 spans: 2 too many
    assert [span.span_id for span in queue.take(100)] == list(range(2, 12))
    assert queue.put([call_span(i, 39) for i in range(3)]) == 1  # 3 x 40: the oldest goes
    assert queue.put([call_span(3, 9)]) == 0  # 2 x 40 + 10 = 90
    assert queue.put([call_span(4, 10)]) == 1  # 90 + 11: the oldest (40) goes
    assert [span.span_id for span in queue.take(100)] == [2, 3, 4]
    assert queue.put([call_span(5, 99)]) == 0  # taken: their weight is gone
    assert queue.put([call_span(6, 200)]) == 2  # heavier than the bound: not kept either
    assert len(queue) == 0
    assert queue.bound == "10 spans, or 100 spans and events"


def test_a_url_is_shown_without_what_may_be_credentials() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://me:s3cret@c:4318/v1/traces"}
    with pytest.raises(OtlpSettingError) as raised:
        endpoint_from(None, [], environ)
    assert raised.value.endpoint == "https://***@c:4318/v1/traces"
    assert "s3cret" not in str(raised.value)
    for url, seen in [
        ("http://tok3n@c", "http://***@c"),
        ("http://me:pa/ss@c:4318/x", "http://***@c:4318/x"),  # a / in the password
        ("me:s3cret@c:4318", "***@c:4318"),
        ("http://c:4318/v1/traces?at=@x", "http://c:4318/v1/traces?at=@x"),
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
    ]:
        assert shown(url) == seen
