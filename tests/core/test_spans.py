"""Spans from records: real doeff 0.8 runs become nested calls, task lanes and OTLP/JSON."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from doeff import Await, Gather, Get, Put, Spawn, Wait, do, slog
from hypothesis import given, settings
from hypothesis import strategies as st

from doeff_flow_core import LiveTrace, TraceFrame, run_workflow
from doeff_flow_core.timeline import openrun, otlp
from doeff_flow_core.timeline import spans as spans_module
from doeff_flow_core.timeline.otlp import export_request, span_id, trace_id, write_export_request
from doeff_flow_core.timeline.spans import (
    CALL,
    EFFECT,
    ERROR,
    EXCEPTION,
    INCOMPLETE,
    OK,
    SLOG,
    WORKFLOW,
    Span,
    spans_of,
)
from doeff_flow_core.tracefiles.reading import RecordStream, read_all
from tests.support.otlp_schema import parse_request
from tests.support.otlp_schema import spans_of as otlp_spans
from tests.support.traces import PAGES, page_args, paged_records

# -- workflows ----------------------------------------------------------------------------


@do
def fetch(key: str) -> Any:
    value = yield Get(key)
    return value


@do
def combine() -> Any:
    a = yield fetch("a")
    yield slog("between", n=1, who="combine")
    b = yield fetch("b")
    return a + b


@do
def top() -> Any:
    total = yield combine()
    yield Put("total", total)
    return total


@do
def sleeper(name: str, seconds: float, after: Any = None) -> Any:
    yield slog("sleeping", name=name)
    if after is not None:  # sleeps only once that task has finished
        yield Wait(after)
    yield Await(asyncio.sleep(seconds))
    return name


@do
def spawner() -> Any:
    quick = yield Spawn(sleeper("quick", 0.01))
    # Both run at once, but the slow one finishes 0.25 s after the quick one at least
    # however long either is held up: their finish times never share a millisecond.
    slow = yield Spawn(sleeper("slow", 0.25, after=quick))
    return (yield Gather(quick, slow))


@do
def explode(key: str) -> Any:
    yield Get(key)
    raise ValueError(f"no good: {key}")


@do
def failing() -> Any:
    yield fetch("a")
    yield explode("a")


@do
def busy(n: int) -> Any:
    for _ in range(n):
        yield Get("a")
    return n


def traced_spans(tmp_path: Path, program: Any, workflow_id: str, **kw: Any) -> list[Span]:
    result = run_workflow(program, workflow_id, tmp_path, **kw)
    return list(spans_of(RecordStream(result.trace_path)))


def by_name(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span.name == name]


def only(spans: list[Span], name: str) -> Span:
    (span,) = by_name(spans, name)
    return span


# -- spans of real runs ---------------------------------------------------------------------


def test_nested_calls_become_nested_spans(tmp_path: Path) -> None:
    spans = traced_spans(tmp_path, top(), "wf-nested", store={"a": 1, "b": 2})
    workflow = only(spans, "wf-nested")
    assert workflow.kind == WORKFLOW and workflow.parent_id is None and workflow.status == OK
    assert workflow.result == "3"
    outer, middle = only(spans, "top"), only(spans, "combine")
    assert outer.parent_id == workflow.span_id and outer.depth == 1
    assert middle.parent_id == outer.span_id and middle.depth == 2
    fetches = by_name(spans, "fetch")
    assert len(fetches) == 2  # the caller moved on between them: two calls
    assert all(f.parent_id == middle.span_id and f.kind == CALL for f in fetches)
    assert [e.name for f in fetches for e in f.events] == ["Get('a')", "Get('b')"]
    assert fetches[0].end <= fetches[1].start
    assert all(f.file == __file__ and f.line is not None for f in fetches)
    (between,) = [e for e in middle.events if e.kind == SLOG]
    assert between.name == "between"
    assert between.attributes == {"n": "1", "who": "combine"} and between.step == 2
    assert [e.name for e in outer.events if e.kind == EFFECT] == ["Put('total', 3)"]
    assert all(s.status == OK for s in spans)
    # Each span lies within its parent.
    index = {s.span_id: s for s in spans}
    for span in spans:
        if span.parent_id is not None:
            parent = index[span.parent_id]
            assert parent.start <= span.start <= span.end <= parent.end


def test_spawned_tasks_hang_off_the_spawning_call_and_end_when_they_finish(
    tmp_path: Path,
) -> None:
    spans = traced_spans(tmp_path, spawner(), "wf-spawn")
    workflow, parent = only(spans, "wf-spawn"), only(spans, "spawner")
    assert parent.task is None and parent.parent_id == workflow.span_id
    sleepers = by_name(spans, "sleeper")
    assert len(sleepers) == 2
    assert {s.task for s in sleepers} != {None} and len({s.task for s in sleepers}) == 2
    for span in sleepers:
        assert span.spawned_by == parent.span_id
        assert span.parent_id == parent.span_id
    quick, slow = sorted(sleepers, key=lambda s: s.end)
    assert [e.attributes.get("name") for e in quick.events if e.kind == SLOG] == ["quick"]
    # Each task's call ends when the trace says the task finished, not when the run does.
    finished = {
        task: at.timestamp()
        for record in read_all(tmp_path / "wf-spawn" / "trace.jsonl").records
        for task, at in record.finished_tasks
    }
    assert quick.end == finished[quick.task] < slow.end == finished[slow.task]
    assert workflow.end >= slow.end


def test_a_failure_marks_the_calls_it_unwound(tmp_path: Path) -> None:
    spans = traced_spans(tmp_path, failing(), "wf-fail", store={"a": 1})
    workflow, outer, boom = only(spans, "wf-fail"), only(spans, "failing"), only(spans, "explode")
    done = only(spans, "fetch")
    assert done.status == OK and done.error is None  # returned before the failure
    for span in (workflow, outer, boom):
        assert span.status == ERROR
        assert span.error == "ValueError: no good: a"
    (exception,) = [e for e in boom.events if e.kind == EXCEPTION]
    assert exception.name == "exception"
    attributes = dict(exception.attributes)
    stack = attributes.pop("exception.stacktrace")
    assert attributes == {"exception.type": "ValueError", "exception.message": "no good: a"}
    # The raise site, outermost first, as Python prints a traceback.
    assert stack.startswith("Traceback (most recent call last):\n")
    assert stack.index(", in failing") < stack.index(", in explode")
    assert stack.endswith("\nValueError: no good: a")
    assert not [e for e in done.events if e.kind == EXCEPTION]


def test_a_trace_without_its_terminal_record_ends_incomplete(tmp_path: Path) -> None:
    result = run_workflow(top(), "wf-cut", tmp_path, store={"a": 1, "b": 2})
    lines = result.trace_path.read_text().splitlines(keepends=True)
    result.trace_path.write_text("".join(lines[:-1]) + lines[-1][:25])  # terminal record torn
    stream = RecordStream(result.trace_path)
    spans = list(spans_of(stream))
    assert stream.torn and stream.skipped == 0
    last_time = read_all(result.trace_path).records[-1].updated_at.timestamp()
    still_open = [s for s in spans if s.name in ("wf-cut", "top")]  # the last record: Put
    assert {s.status for s in still_open} == {INCOMPLETE}
    assert {s.end for s in still_open} == {last_time}
    ended = [*by_name(spans, "fetch"), only(spans, "combine")]
    assert {s.status for s in ended} == {OK}  # returned before the cut


def test_events_per_span_are_bounded_and_the_rest_counted(tmp_path: Path) -> None:
    result = run_workflow(busy(300), "wf-busy", tmp_path, store={"a": 1})
    spans = list(spans_of(RecordStream(result.trace_path), max_events=50))
    call = only(spans, "busy")
    assert len(call.events) == 50 and call.dropped_events == 250


def test_reruns_appended_to_one_trace_are_separate_traces(tmp_path: Path) -> None:
    run_workflow(top(), "wf-again", tmp_path, store={"a": 1, "b": 2})
    run_workflow(top(), "wf-again", tmp_path, store={"a": 1, "b": 2})
    spans = list(spans_of(RecordStream(tmp_path / "wf-again" / "trace.jsonl")))
    workflows = by_name(spans, "wf-again")
    assert len(workflows) == 2 and workflows[0].run != workflows[1].run
    assert {s.status for s in workflows} == {OK}
    assert len(by_name(spans, "fetch")) == 4


# -- reading a whole trace ------------------------------------------------------------------


def record(
    step: int,
    *stack: str,
    status: str = "running",
    run: str = "r1",
    calls: tuple[int | None, ...] = (),
    **kw: Any,
) -> LiveTrace:
    """A record of ``stack`` (function names, outermost first); ``calls``: their call ids."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = calls + (None,) * (len(stack) - len(calls))
    return LiveTrace(
        workflow_id="wf",
        step=step,
        status=status,
        current_effect=kw.pop("effect", f"E{step}") if status == "running" else None,
        trace=tuple(
            TraceFrame(name, "/w.py", 10 + i, call=call)
            for i, (name, call) in enumerate(zip(stack, ids, strict=True))
        ),
        started_at=start,
        updated_at=start + timedelta(seconds=step),
        run=run,
        **kw,
    )


def test_a_stream_reads_rotated_parts_oldest_first_skipping_bad_lines(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    parts = {trace.with_name("trace.jsonl.2"): [1, 2], trace.with_name("trace.jsonl.1"): [3, 4]}
    for path, steps in parts.items():
        path.write_text("".join(record(n, "main").to_json() + "\n" for n in steps))
    trace.write_text(record(5, "main").to_json() + "\nnot json\n" + record(6, "main").to_json()[:9])
    stream = RecordStream(trace)
    assert [r.step for r in stream] == [1, 2, 3, 4, 5]
    assert stream.skipped == 1 and stream.torn


def test_a_stream_reads_a_trace_larger_than_its_block(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    line = record(1, "main", "a").to_json() + "\n"
    count = 3 * 1024 * 1024 // len(line) + 7
    with trace.open("w") as out:
        for step in range(1, count + 1):
            out.write(record(step, "main", "a").to_json() + "\n")
    stream = RecordStream(trace)
    steps = [r.step for r in stream]
    assert steps == list(range(1, count + 1))
    assert stream.skipped == 0 and not stream.torn


def test_a_stream_of_no_trace_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(RecordStream(tmp_path / "trace.jsonl"))


def test_records_from_a_gap_still_make_spans() -> None:
    records = [record(1, "main", "a"), record(2, "main", "a"), record(9, "main", "b")]
    spans = list(spans_of(records))
    a, b = [s for s in spans if s.name in ("a", "b")]
    assert (a.first_step, a.last_step, a.end) == (1, 2, b.start)
    assert b.status == INCOMPLETE


def test_tasks_of_a_writer_that_never_says_when_they_end_are_ended_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(openrun, "TIDY_EVERY", 4)
    records = [record(1, "main"), record(2, "work", task=1)]
    # Task 1 falls quiet; task 2 goes on, a record every 4 s, past TASK_QUIET seconds.
    records += [
        record(step, "work", task=2) for step in range(3, 3 + int(spans_module.TASK_QUIET) + 20, 4)
    ]
    ended = [span for span in spans_of(records) if span.name == "work"]
    one, two = sorted(ended, key=lambda span: span.end)
    assert one.task == 1 and one.end == one.start == records[1].updated_at.timestamp()
    assert one.status == OK
    assert two.task == 2 and two.status == INCOMPLETE  # still going when the trace ends
    assert two.start == records[2].updated_at.timestamp()


def test_open_tasks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openrun, "TIDY_EVERY", 10)
    monkeypatch.setattr(openrun, "MAX_OPEN_TASKS", 5)
    records = [record(1, "main", spawned=((1, None),))]  # a writer that says when tasks end
    records += [record(step, "work", task=step) for step in range(2, 60)]
    builder = spans_module.SpanBuilder()
    ended = [span for rec in records for span in builder.add(rec)]
    assert len(ended) >= 40  # the least recently active tasks were ended
    assert all(span.name == "work" for span in ended)
    assert [span.task for span in ended] == sorted(span.task for span in ended)


# -- calls told apart by their ids ----------------------------------------------------------


def test_calls_from_one_line_are_a_span_each_when_records_carry_call_ids() -> None:
    records = paged_records()
    spans = list(spans_of(records))
    pages = by_name(spans, "fetch_page")
    assert [s.args for s in pages] == [page_args(page) for page in range(PAGES)]
    assert [(s.first_step, s.last_step) for s in pages] == [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert [[e.name for e in s.events] for s in pages] == [
        [f"Get('page-{page}-20')", f"Get('page-{page}-21')"] for page in range(PAGES)
    ]
    main = only(spans, "main")
    assert main.args == "region='apac'" and main.first_step == 1 and main.last_step == 8
    assert all(s.parent_id == main.span_id and s.depth == 2 for s in pages)
    assert len({s.span_id for s in spans}) == len(spans) == PAGES + 2
    # each call ends when the next begins, at the record that first has the next call
    for before, after in pairwise(pages):
        assert before.end == after.start == records[after.first_step - 1].updated_at.timestamp()
    assert only(spans, "wf-pages").args is None


def test_without_call_ids_calls_from_one_line_are_one_span_as_before() -> None:
    spans = list(spans_of(paged_records(calls=False, args=False)))
    (pages,) = by_name(spans, "fetch_page")
    assert (pages.first_step, pages.last_step, pages.args) == (1, 8, None)
    assert len(pages.events) == 2 * PAGES
    assert len(spans) == 3


def test_without_call_ids_other_args_are_still_another_call() -> None:
    pages = by_name(list(spans_of(paged_records(calls=False))), "fetch_page")
    assert [s.args for s in pages] == [page_args(page) for page in range(PAGES)]


def test_one_call_id_is_one_span_even_when_its_args_are_known_only_later() -> None:
    records = paged_records(args=False)
    # the first call's second record says its arguments: still the same call
    first = records[1]
    (main, fetch) = first.trace
    records[1] = LiveTrace(
        **{**first.__dict__, "trace": (main, TraceFrame(**{**fetch.__dict__, "args": "x=1"}))}
    )
    pages = by_name(list(spans_of(records)), "fetch_page")
    assert [(s.first_step, s.last_step) for s in pages] == [(1, 2), (3, 4), (5, 6), (7, 8)]


def test_calls_and_their_args_export_as_otlp_spans_of_their_own() -> None:
    spans = list(spans_of(paged_records()))
    received = otlp_spans(parse_request(export_request(spans)))
    pages = [s for s in received if s.name == "fetch_page"]
    values = [{a.key: a.value for a in s.attributes} for s in pages]
    assert [v["doeff.args"].string_value for v in values] == [
        page_args(page) for page in range(PAGES)
    ]
    assert len({s.span_id for s in received}) == len(received) == PAGES + 2
    (main,) = [s for s in received if s.name == "main"]
    assert all(s.parent_span_id == main.span_id for s in pages)
    (workflow,) = [s for s in received if s.name == "wf-pages"]
    assert "doeff.args" not in {a.key for a in workflow.attributes}
    # untrusted arguments stay text, as valid UTF-8
    hostile = spans[0]._replace(args='"},\ud800\x00')
    (got,) = otlp_spans(parse_request(export_request([hostile])))
    args = {a.key: a.value.string_value for a in got.attributes}["doeff.args"]
    assert args == '"},\ufffd\x00'


# -- OTLP/JSON ----------------------------------------------------------------------------


def test_otlp_export_parses_with_the_official_schema(tmp_path: Path) -> None:
    spans = traced_spans(tmp_path, spawner(), "wf-otlp")
    message = parse_request(export_request(spans))
    (resource_spans,) = message.resource_spans
    resource = {a.key: a.value for a in resource_spans.resource.attributes}
    assert resource["service.name"].string_value == "doeff-flow"
    assert resource["host.name"].string_value
    assert resource["process.pid"].int_value > 0
    received = otlp_spans(message)
    assert len(received) == len(spans)
    ids = {s.span_id for s in received}
    assert len(ids) == len(received) and {len(i) for i in ids} == {8}
    assert {s.trace_id for s in received} == {bytes.fromhex(trace_id("wf-otlp", spans[0].run))}
    roots = [s for s in received if not s.parent_span_id]
    assert [s.name for s in roots] == ["wf-otlp"]
    assert all(s.parent_span_id in ids for s in received if s.parent_span_id)
    (child,) = [s for s in received if s.name == "sleeper" and s.links][:1]
    attributes = {a.key: a.value for a in child.attributes}
    assert attributes["code.function"].string_value == "sleeper"
    assert attributes["code.filepath"].string_value == __file__
    assert attributes["code.lineno"].int_value > 0
    assert attributes["doeff.workflow_id"].string_value == "wf-otlp"
    assert attributes["doeff.task"].int_value >= 0
    assert child.status.code == 1  # STATUS_CODE_OK
    assert child.end_time_unix_nano >= child.start_time_unix_nano > 0


def test_otlp_streamed_request_equals_the_built_one_and_ids_are_stable(tmp_path: Path) -> None:
    result = run_workflow(failing(), "wf-same", tmp_path, store={"a": 1})
    first = list(spans_of(RecordStream(result.trace_path)))
    again = list(spans_of(RecordStream(result.trace_path)))
    out = io.StringIO()
    assert write_export_request(first, out) == len(first)
    assert json.loads(out.getvalue()) == export_request(again)
    received = otlp_spans(parse_request(out.getvalue()))
    failed = [s for s in received if s.status.code == 2]
    assert {s.name for s in failed} == {"wf-same", "failing", "explode"}
    assert all(s.status.message == "ValueError: no good: a" for s in failed)
    assert span_id("wf-same", first[0].run, 1) != span_id("wf-same", first[0].run, 2)


@pytest.mark.parametrize(
    ("start", "step"),
    [(datetime(1960, 1, 1, tzinfo=UTC), 1), (datetime(9999, 1, 1, tzinfo=UTC), 1),
     (datetime(2026, 1, 1, tzinfo=UTC), 2**70)],
)  # fmt: skip
def test_times_and_numbers_out_of_otlp_s_range_still_make_a_valid_request(
    start: datetime, step: int
) -> None:
    first = record(1, "main", "inner", task=2**70)
    rec = LiveTrace(**{**first.__dict__, "step": step, "started_at": start, "updated_at": start})
    later = LiveTrace(**{**rec.__dict__, "step": step + 1, "trace": rec.trace[:1]})
    message = parse_request(export_request(spans_of([rec, later])))
    assert len(otlp_spans(message)) == 3


def test_traces_without_run_ids_still_give_each_run_its_own_ids() -> None:
    runs = []
    for start in (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)):
        first = record(1, "main", run=None)
        runs += [
            LiveTrace(**{**first.__dict__, "started_at": start}),
            LiveTrace(**{**first.__dict__, "step": 2, "status": "completed", "started_at": start,
                         "current_effect": None}),
        ]  # fmt: skip
    received = otlp_spans(parse_request(export_request(spans_of(runs))))
    assert len(received) == 4
    assert len({span.span_id for span in received}) == 4
    assert len({span.trace_id for span in received}) == 2


def test_huge_names_are_encoded_like_short_ones_without_being_kept() -> None:
    huge = "f" * 5000
    first = record(1, "main", huge, run="r-huge")
    spans = list(spans_of([first, LiveTrace(**{**first.__dict__, "step": 2, "trace": ()})]))
    # worked out anew, not kept: the caches are as they were
    sizes = [cached.cache_info().currsize for cached in otlp._CACHED]  # type: ignore[attr-defined]
    alone = export_request([span for span in spans if span.name == huge])
    assert [cached.cache_info().currsize for cached in otlp._CACHED] == sizes  # type: ignore[attr-defined]
    received = {s.name: s for s in otlp_spans(parse_request(export_request(spans)))}
    inner = received[huge]
    assert alone == export_request([span for span in spans if span.name == huge])
    assert inner.span_id.hex() == span_id("wf", "r-huge", 3)
    assert inner.parent_span_id == received["main"].span_id
    assert {a.key: a.value.string_value for a in inner.attributes}["code.function"] == huge


def test_a_huge_workflow_id_is_not_kept_and_a_lone_surrogate_run_id_still_exports() -> None:
    first = record(1, "main", run="r-\ud800")
    first = LiveTrace(**{**first.__dict__, "workflow_id": "w" * 5000})
    spans = list(spans_of([first, LiveTrace(**{**first.__dict__, "step": 2, "trace": ()})]))
    sizes = [cached.cache_info().currsize for cached in otlp._CACHED]  # type: ignore[attr-defined]
    received = otlp_spans(parse_request(export_request(spans)))
    assert [cached.cache_info().currsize for cached in otlp._CACHED] == sizes  # type: ignore[attr-defined]
    assert {s.name for s in received} == {"w" * 5000, "main"}
    assert len({s.span_id for s in received}) == 2


def test_an_empty_export_is_still_a_valid_request() -> None:
    out = io.StringIO()
    assert write_export_request([], out) == 0
    assert not parse_request(out.getvalue()).resource_spans


# -- any sequence of records --------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
stacks = st.lists(names, max_size=4)
tasks = st.none() | st.integers(min_value=0, max_value=3)
# call ids as a hostile trace may have them too: missing, repeated, reused at other depths
call_ids = st.lists(st.none() | st.integers(min_value=0, max_value=3), max_size=4).map(tuple)
steps_of = st.lists(
    st.tuples(stacks, tasks, st.sampled_from(["running"] * 8 + ["completed", "failed"]), call_ids),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps_of, st.booleans(), st.booleans())
def test_any_records_give_well_formed_spans(steps: list[Any], spawn: bool, ids: bool) -> None:
    records = []
    for n, (stack, task, status, calls) in enumerate(steps, start=1):
        extra: dict[str, Any] = {"task": task}
        if spawn and task is not None and n % 3 == 0:
            extra["spawned"] = ((task, None),)
        if status == "failed":
            extra["error"] = "KeyError: 'x'"
        if ids:
            extra["calls"] = calls[: len(stack)]
        records.append(record(n, *stack, status=status, run=f"r{n // 15}", **extra))
    spans = list(spans_of(records))
    segment: dict[int, Span] = {}  # one run's spans: its workflow span comes last
    for span in spans:
        assert span.end >= span.start
        assert span.span_id not in segment
        segment[span.span_id] = span
        if span.kind == WORKFLOW:
            for inner in segment.values():
                if inner.parent_id is not None:
                    parent = segment[inner.parent_id]
                    assert parent.start <= inner.start
                    if inner.spawned_by is None:  # a spawned task may outlive its spawner
                        assert inner.end <= parent.end and inner.depth == parent.depth + 1
            segment = {}
    assert not segment
    assert sum(1 for s in spans if s.kind == WORKFLOW) == _count_runs(records)


def _count_runs(records: list[LiveTrace]) -> int:
    """Runs as a reader sees them: a new run id, or anything after a terminal record."""
    count, run, ended = 0, None, True
    for rec in records:
        if ended or rec.run != run:
            count += 1
        run, ended = rec.run, rec.is_terminal
    return count
