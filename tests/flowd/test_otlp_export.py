"""flowd exporting spans to an OpenTelemetry collector: a real flowd, a real HTTP receiver
on 127.0.0.1 that checks every request against the official OTLP schema, and real doeff
workflows (nested calls, Spawn, slog) run in this process: what reaches the collector,
retries, rejections, wrong settings, slow collectors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from doeff_flow_core.timeline.otlp import span_id, trace_id
from doeff_flow_core.timeline.spans import ERROR, spans_of
from doeff_flow_core.tracefiles.reading import RecordStream
from tests.support.flowd import flowd
from tests.support.otlp import (
    WAIT,
    Collector,
    attributes,
    count,
    exporting,
    free_port,
    held,
    hex_id,
    run,
    stats,
    trace_dir,
    trace_spans,
)
from tests.support.procs import wait_for
from tests.support.traces import PAGES, page_args, paged_records

STATUS_OK, STATUS_ERROR = 1, 2


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
            "produced_spans": len(expected),
            "queue_limit": 20_000,
            "queue_weight": 0,
            "queue_weight_limit": 200_000,
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
    assert [attributes(span.attributes)["doeff.args"] for span in pages] == [
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
            "http://h:4318",
            "credentials in a URL are not sent",
        ),
        (["--otlp-endpoint", "http://u:s3cret@h:99999/"], "http://h:99999/", "the port"),
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


def test_a_failure_in_a_spawned_task_reaches_the_collector_where_it_happened(
    tmp_path: Path, collector: Collector
) -> None:
    """examples/report.py --fail: latam's page 1 raises in its own task. That call, its
    task's fetch_region, build_report and the run are errors with an exception event
    (type, message, the stack); the region still fetching is cancelled, not failed."""
    traces = trace_dir(tmp_path)
    report = Path(__file__).resolve().parents[2] / "examples" / "report.py"
    with exporting(tmp_path, collector.url):
        done = subprocess.run(
            [sys.executable, str(report), "--fail", "--trace-dir", str(traces)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        trace = traces / "report-fail" / "trace.jsonl"
        expected = list(spans_of(RecordStream(trace)))
        wait_for(lambda: len(collector.taken()) == len(expected), WAIT, "every span")
    taken = collector.taken()
    error = "UpstreamError: latam page 1: upstream returned 503"
    failed = {hex_id(span) for span in expected if span.status == ERROR}
    assert sorted(taken[key].name for key in failed) == [
        "build_report",
        "fetch_page",
        "fetch_region",
        "report-fail",
    ]
    for key, span in taken.items():
        if key in failed:
            assert (span.status.code, span.status.message) == (STATUS_ERROR, error)
            (event,) = [e for e in span.events if e.name == "exception"]
            said = attributes(event.attributes)
            assert said["exception.type"] == "UpstreamError"
            assert said["exception.message"] == "latam page 1: upstream returned 503"
            assert "in fetch_page" in said["exception.stacktrace"]
        else:
            assert span.status.code != STATUS_ERROR
            assert not [e for e in span.events if e.name == "exception"]
    cancelled = [s for s in taken.values() if attributes(s.attributes).get("doeff.cancelled")]
    assert {s.name for s in cancelled} == {"fetch_region", "fetch_page"}  # apac, mid-page
    assert all(s.status.code == 0 for s in cancelled)  # unset: neither ok nor failed
    assert collector.invalid == []
