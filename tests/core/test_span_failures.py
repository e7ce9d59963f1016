"""Where a run's time went and where it failed, in its spans: the call that raised and
every call it unwound through are failed, abandoned calls are cancelled, and each call
knows where it was made and how long it waited in its own effects.

The runs are examples/report.py's: three regions fetched page by page in spawned tasks,
latam's page 1 raising with ``--fail``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from doeff import Await, Get, Try, do

from doeff_flow_core import LiveTrace, TraceFrame, run_workflow
from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.timeline.spans import (
    CALL,
    CANCELLED,
    ERROR,
    EXCEPTION,
    OK,
    SLOG,
    WORKFLOW,
    Span,
    spans_of,
)
from doeff_flow_core.tracefiles.reading import read_all

REPORT = Path(__file__).resolve().parents[2] / "examples" / "report.py"
ERROR_TEXT = "UpstreamError: latam page 1: upstream returned 503"
REGIONS = ("emea", "apac", "latam")


def report_spans(tmp_path: Path, *flags: str) -> tuple[str, list[Span]]:
    done = subprocess.run(
        [sys.executable, str(REPORT), "--trace-dir", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    workflow_id = "report-fail" if flags else "report"
    assert done.returncode == 0, done.stderr
    records = read_all(tmp_path / workflow_id / "trace.jsonl").records
    return workflow_id, list(spans_of(records))


def by_region(spans: list[Span]) -> dict[str, list[Span]]:
    """Each region's task's spans, the region told by its task's slog lines (which work
    on 3.11 too, where calls carry no arguments)."""
    regions: dict[str, list[Span]] = {}
    for outer in (s for s in spans if s.name == "fetch_region"):
        said = {e.attributes.get("region") for e in outer.events if e.kind == SLOG}
        (region,) = said
        assert region is not None
        regions[region.strip("'")] = sorted(
            (s for s in spans if s.task == outer.task), key=lambda s: s.span_id
        )
    assert sorted(regions) == sorted(REGIONS)
    return regions


def test_only_the_call_that_raised_and_the_calls_it_unwound_through_fail(
    tmp_path: Path,
) -> None:
    workflow_id, spans = report_spans(tmp_path, "--fail")
    failed = sorted((s.name, s.task is None) for s in spans if s.status == ERROR)
    # The root, build_report awaiting the tasks, latam's fetch_region and its page 1.
    assert failed == [
        ("build_report", True),
        ("fetch_page", False),
        ("fetch_region", False),
        (workflow_id, True),
    ]
    regions = by_region(spans)
    latam = regions["latam"]
    pages = [s for s in latam if s.name == "fetch_page"]
    assert [s.status for s in pages] == [OK, ERROR]  # page 0 returned
    for span in (latam[0], pages[-1]):
        assert span.error == ERROR_TEXT
        (event,) = [e for e in span.events if e.kind == EXCEPTION]
        assert event.attributes["exception.type"] == "UpstreamError"
        assert event.attributes["exception.message"] == "latam page 1: upstream returned 503"
        stack = event.attributes["exception.stacktrace"]
        assert stack.index("in build_report") < stack.index("in fetch_region")
        assert stack.index("in fetch_region") < stack.index("in fetch_page")
    if sys.version_info >= (3, 12):  # the exact tracer writes arguments
        assert pages[-1].args == "region='latam', page=1, fail=True"
    # emea had finished: all ok. apac was still fetching: abandoned, not failed.
    assert {s.status for s in regions["emea"]} == {OK}
    assert regions["apac"][0].status == CANCELLED
    assert regions["apac"][-1].status == CANCELLED
    assert all(s.error is None for s in regions["apac"] + regions["emea"])


def test_a_completed_report_has_no_failed_or_cancelled_call(tmp_path: Path) -> None:
    _, spans = report_spans(tmp_path)
    assert {s.status for s in spans} == {OK}
    assert len([s for s in spans if s.name == "fetch_page"]) == 12  # a span per loop call


def test_each_call_knows_where_it_was_made_and_what_it_waited_for(tmp_path: Path) -> None:
    _, spans = report_spans(tmp_path)
    source = REPORT.read_text().splitlines()
    for span in spans:
        if span.kind == WORKFLOW or span.name == "build_report":
            assert span.site_file is None and span.site_line is None
            continue
        assert span.site_file == str(REPORT)
        assert span.site_line is not None
        made_at = source[span.site_line - 1]
        assert f"{span.name}(" in made_at
    for page in (s for s in spans if s.name == "fetch_page"):
        waits = dict(page.waits)
        assert set(waits) == {"Ask", "Await"}
        assert waits["Await"] >= 0.004  # each page sleeps 5 ms or more
        assert sum(waits.values()) <= page.end - page.start + 1e-6
    (report,) = [s for s in spans if s.name == "build_report"]
    # build_report spends its time waiting for the regions it spawned.
    assert max(dict(report.waits), key=dict(report.waits).__getitem__) == "Gather"


def record(
    step: int, task: int | None, *stack: str, status: str = "running", **kw: object
) -> LiveTrace:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return LiveTrace(
        workflow_id="wf",
        step=step,
        status=status,
        current_effect=f"E{step}()" if status == "running" else None,
        trace=tuple(TraceFrame(name, "/w.py", 10 + i) for i, name in enumerate(stack)),
        started_at=start,
        updated_at=start + timedelta(seconds=step),
        run="r1",
        task=task,
        **kw,  # type: ignore[arg-type]
    )


def test_the_raising_task_is_found_when_its_end_came_records_before_the_failure() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=5.5)
    records = [
        record(1, None, "main", spawned=((1, None), (2, None))),
        record(2, 1, "region", "page"),
        record(3, 2, "region", "page"),
        record(4, 2, "region", "page"),
        record(5, None, "main"),
        # Task 1 raised; before the root's failure is written, task 2 goes on.
        record(6, 2, "region", "page", finished_tasks=((1, at),)),
        record(7, 2, "region", "page"),
        record(8, 2, "region", "page"),
        record(
            9,
            None,
            "main",
            "region",
            "page",
            status="failed",
            error="ValueError: boom",
        ),
    ]
    spans = list(spans_of(records))
    status = {(s.task, s.name): s.status for s in spans if s.kind == CALL}
    assert status == {
        (None, "main"): ERROR,
        (1, "region"): ERROR,
        (1, "page"): ERROR,
        (2, "region"): CANCELLED,
        (2, "page"): CANCELLED,
    }
    (page,) = [s for s in spans if s.task == 1 and s.name == "page"]
    assert page.end == at.timestamp()  # it ended when its task did


@pytest.mark.parametrize("late", [1, 15])
def test_a_task_that_finished_ends_ok_a_few_records_later(late: int) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=2.5)
    records = [
        record(1, None, "main", spawned=((1, None),)),
        record(2, 1, "job"),
        record(3, None, "main", finished_tasks=((1, at),)),
    ]
    records += [record(4 + i, None, "main") for i in range(late)]
    records.append(record(4 + late, None, status="completed", result="1"))
    spans = list(spans_of(records))
    (job,) = [s for s in spans if s.name == "job"]
    assert job.status == OK and job.end == at.timestamp()


@do
def flaky(attempt: int) -> Any:
    yield Get("k")
    if attempt == 0:
        raise ValueError("try again")
    return attempt


@do
def retried() -> Any:
    first = yield Try(flaky(0))
    assert first.is_err()
    yield Await(asyncio.sleep(0.2))  # the failed call must end when it raised, not here
    return (yield flaky(1))


@pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="only the exact tracer (3.12+) sees a call that raised and was caught",
)
def test_a_call_that_raised_and_was_caught_is_failed_in_a_run_that_completed(
    tmp_path: Path,
) -> None:
    result = run_workflow(retried(), "wf-retry", tmp_path, store={"k": 1})
    assert result.is_ok()
    records = read_all(tmp_path / "wf-retry" / "trace.jsonl").records
    said = [call for record in records for call in record.failed_calls]
    assert [error for _call, _at, error in said] == ["ValueError: try again"]
    spans = list(spans_of(records))
    calls = sorted((s for s in spans if s.name == "flaky"), key=lambda s: s.start)
    assert [(s.status, s.error) for s in calls] == [
        (ERROR, "ValueError: try again"),
        (OK, None),
    ]
    (event,) = [e for e in calls[0].events if e.kind == EXCEPTION]
    assert event.attributes["exception.type"] == "ValueError"
    assert calls[0].end - calls[0].start < 0.15  # ended when it raised
    assert {s.status for s in spans if s.name in ("retried", "wf-retry")} == {OK}


def test_failed_calls_are_parsed_strictly() -> None:
    good = record(1, None, "main").to_dict()
    good["failed_calls"] = [[3, "2026-01-01T00:00:01.000+00:00", "ValueError: x"]]
    parsed = LiveTrace.from_dict(good)
    assert parsed.failed_calls == ((3, datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), "ValueError: x"),)
    assert LiveTrace.from_dict(parsed.to_dict()) == parsed
    for bad in (
        [[3, "2026-01-01T00:00:01+00:00"]],
        [["3", "2026-01-01T00:00:01+00:00", "e"]],
        [[3, "yesterday", "e"]],
        [[3, "2026-01-01T00:00:01+00:00", 5]],
        {"3": "e"},
    ):
        with pytest.raises(MalformedRecord):
            LiveTrace.from_dict({**good, "failed_calls": bad})
