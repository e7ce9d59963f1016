"""The exporter's counters add up: a real flowd exporting real workflows' spans to a
collector that is slow, refuses, or is not there reports ``produced_spans == sent_spans
+ dropped_spans + rejected_spans + queued`` at every moment, and what it says it dropped
or had rejected is exactly what the collector did not take. When spans queue up faster
than batches of BATCH_SPANS go, a batch takes more of them (within BATCH_WEIGHT)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from doeff import Get, Put, do

from doeff_flow_core import run_workflow
from doeff_flow_core.timeline.spans import CALL, EFFECT, OK, Span, SpanEvent
from flowd.index import FRESH_LIMIT
from flowd.otlp.exporter import BATCH_MOST, BATCH_SPANS, BATCH_WEIGHT
from flowd.otlp.queue import QUEUE_LIMIT, WEIGHT_LIMIT, SpanQueue
from tests.support.otlp import (
    WAIT,
    Collector,
    exporting,
    free_port,
    hex_id,
    run,
    stats,
    trace_dir,
    trace_spans,
)
from tests.support.procs import wait_for

FIGURES = ("produced_spans", "sent_spans", "dropped_spans", "rejected_spans", "queued")


def accounted(report: dict[str, Any]) -> bool:
    """Every span that came to the exporter is counted once, where it is now."""
    parts = report["sent_spans"] + report["dropped_spans"] + report["rejected_spans"]
    return bool(report["produced_spans"] == parts + report["queued"])


def test_a_slow_then_refusing_collector_misses_exactly_what_flowd_counts(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    gate = threading.Event()
    # the first request is answered at once; the next ones wait for the gate, and the
    # second of all is refused
    collector = Collector(hold=gate, hold_after=1, statuses=[200, 400])
    try:
        with exporting(tmp_path, collector.url, "--otlp-queue", 10) as daemon:
            first = run(traces, "wf-0")
            wait_for(lambda: stats(daemon)["sent_spans"] == len(first), WAIT, "the first run")
            later = [span for n in range(1, 5) for span in run(traces, f"wf-{n}")]
            total = len(first) + len(later)
            report = wait_for(
                lambda: (r := stats(daemon))["produced_spans"] == total and r, WAIT, "all read"
            )
            # the collector holds a batch; the queue overflowed meanwhile
            assert report["dropped_spans"] > 0
            assert report["queue_limit"] == 10
            assert report["queue_weight_limit"] == WEIGHT_LIMIT
            assert 0 < report["queue_weight"] <= WEIGHT_LIMIT
            assert report["queued"] <= 10 + 10  # the queue, and the batch being sent
            assert accounted(report), report
            gate.set()
            report = wait_for(
                lambda: (r := stats(daemon))["queued"] == 0 and r, WAIT, "the queue sent"
            )
            assert accounted(report), report
            assert report["queue_weight"] == 0
        expected = {hex_id(span) for span in first + later}
        taken = collector.taken()  # the spans of the requests answered 2xx
        refused = [r for r in collector.requests if r.status >= 300]
        assert [len(r.spans) for r in refused] == [report["rejected_spans"]]
        assert report["rejected_spans"] > 0
        assert report["sent_spans"] == len(taken)
        assert set(taken) <= expected
        received = set(taken) | {s.span_id.hex() for r in refused for s in r.spans}
        assert report["dropped_spans"] == len(expected - received) > 0
        assert report["produced_spans"] == len(expected)
    finally:
        collector.close()


def test_partial_successes_are_rejections_of_spans_the_collector_got(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    collector.body = b'{"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}}'
    with exporting(tmp_path, collector.url) as daemon:
        spans = run(traces, "wf-partial")
        report = wait_for(
            lambda: (r := stats(daemon))["queued"] == 0 and r["produced_spans"] and r,
            WAIT,
            "sent",
        )
        requests = len(collector.requests)
        assert report["rejected_spans"] == 2 * requests
        assert report["sent_spans"] == len(spans) - 2 * requests
        assert report["dropped_spans"] == 0
        assert accounted(report), report


def test_with_no_collector_every_span_is_queued_or_dropped(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    with exporting(tmp_path, f"http://127.0.0.1:{free_port()}", "--otlp-queue", 5) as daemon:
        spans = run(traces, "wf-nowhere")
        report = wait_for(
            lambda: (r := stats(daemon))["produced_spans"] == len(spans) and r, WAIT, "read"
        )
        wait_for(lambda: stats(daemon)["failed_requests"] >= 2, WAIT, "retries")
        report = stats(daemon)
        assert report["sent_spans"] == report["rejected_spans"] == 0
        assert report["dropped_spans"] == len(spans) - report["queued"] > 0
        assert accounted(report), report
        assert report["queue_limit"] == 5


def test_an_idle_exporter_reports_its_bounds(tmp_path: Path, collector: Collector) -> None:
    trace_dir(tmp_path)
    with exporting(tmp_path, collector.url) as daemon:
        report = stats(daemon)
        with daemon.client() as client:
            assert client.call("ping")["otlp"] == report
    assert {key: report[key] for key in FIGURES} == dict.fromkeys(FIGURES, 0)
    assert report["queue_limit"] == QUEUE_LIMIT
    assert report["queue_weight_limit"] == WEIGHT_LIMIT
    assert report["queue_weight"] == 0


# -- bigger batches when spans queue up ---------------------------------------------------


@do
def step() -> Any:
    value = yield Get("k")
    return value


@do
def many(calls: int) -> Any:
    total = 0
    for _ in range(calls):
        total += yield step()
        yield Put("total", total)  # the caller moves on: the next step() is another span
    return total


def test_spans_queued_faster_than_batches_go_leave_in_bigger_batches(tmp_path: Path) -> None:
    traces = trace_dir(tmp_path)
    gate = threading.Event()
    collector = Collector(hold=gate)  # every request waits for the gate
    try:
        with exporting(tmp_path, collector.url) as daemon:
            calls = 3 * BATCH_SPANS
            assert run_workflow(many(calls), "wf-many", traces, store={"k": 1}).is_ok()
            spans = trace_spans(traces, "wf-many")
            assert len(spans) >= calls
            # the first batch waits at the collector while the rest queue up
            wait_for(lambda: stats(daemon)["produced_spans"] == len(spans), WAIT, "all read")
            gate.set()
            report = wait_for(
                lambda: (r := stats(daemon))["sent_spans"] == len(spans) and r, WAIT, "all sent"
            )
            assert accounted(report), report
        sizes = [len(request.spans) for request in collector.requests]
        assert sum(sizes) == len(spans)
        assert max(sizes) > BATCH_SPANS  # the queue was deeper than a batch: one took more
        assert len(sizes) < len(spans) / BATCH_SPANS
    finally:
        collector.close()


def span(number: int, events: int) -> Span:
    event = SpanEvent("Get('k')", 0.0, EFFECT, 1)
    return Span(
        "wf", "run", number, None, CALL, "f", None, None, None, 0.0, 1.0, OK, 1, 1,
        events=(event,) * events,
    )  # fmt: skip


def test_a_big_batch_stops_at_its_weight_past_the_usual_size() -> None:
    queue = SpanQueue(limit=100_000, weight_limit=10_000_000)
    queue.put([span(n, 9) for n in range(5_000)])  # each weighs 10
    batch = queue.take(BATCH_MOST, BATCH_WEIGHT, least=BATCH_SPANS)
    assert len(batch) == BATCH_WEIGHT // 10
    assert [s.span_id for s in batch] == list(range(len(batch)))  # the oldest first
    assert queue.total_weight == 10 * (5_000 - len(batch))
    heavy = SpanQueue(limit=100_000, weight_limit=10_000_000)
    heavy.put([span(n, 127) for n in range(1_000)])
    # the usual batch is taken whatever it weighs, and nothing past it here
    assert len(heavy.take(BATCH_MOST, BATCH_WEIGHT, least=BATCH_SPANS)) == BATCH_SPANS
    light = SpanQueue(limit=100_000, weight_limit=10_000_000)
    light.put([span(n, 0) for n in range(20_000)])
    assert len(light.take(BATCH_MOST, BATCH_WEIGHT, least=BATCH_SPANS)) == BATCH_MOST
    assert len(light.take(3)) == 3


# -- a new trace flowd first reads when it is already big -----------------------------------


@do
def many_then_wait(calls: int, gate: threading.Event | None) -> Any:
    total = yield many(calls)
    if gate is not None:
        assert gate.wait(WAIT)
    last = yield step()
    return total + last


@pytest.mark.parametrize("running", [True, False])
def test_a_new_trace_too_big_to_read_at_once_has_every_span_exported(
    tmp_path: Path, collector: Collector, running: bool
) -> None:
    """A busy flowd may first read a new workflow's trace after it grew past what the
    index reads at once (FRESH_LIMIT): it then gets the latest record only. The run
    began while flowd ran: each of its spans is exported, none lost uncounted. (flowd is
    stopped while the trace grows, as a busy one is late.)"""
    traces = trace_dir(tmp_path)
    gate = threading.Event() if running else None
    program = many_then_wait(2 * BATCH_SPANS, gate)
    writer = threading.Thread(
        target=lambda: run_workflow(program, "wf-big", traces, store={"k": 1})
    )
    with exporting(tmp_path, collector.url) as daemon:
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            writer.start()
            trace = traces / "wf-big" / "trace.jsonl"
            if running:
                done = f"Put('total', {2 * BATCH_SPANS})".encode()
                wait_for(lambda: trace.exists() and done in trace.read_bytes(), WAIT, "calls")
            else:
                writer.join(WAIT)
            assert trace.stat().st_size > FRESH_LIMIT
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        try:
            wait_for(lambda: stats(daemon)["produced_spans"] > 2 * BATCH_SPANS, WAIT, "spans")
        finally:
            if gate is not None:
                gate.set()
            writer.join(WAIT)
        expected = trace_spans(traces, "wf-big")
        report = wait_for(
            lambda: (r := stats(daemon))["sent_spans"] == len(expected) and r, WAIT, "all sent"
        )
        assert report["produced_spans"] == len(expected)
        assert accounted(report), report
    assert set(collector.taken()) == {hex_id(span) for span in expected}
