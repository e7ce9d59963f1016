"""Spans as Chrome Trace Event Format JSON, for Perfetto (ui.perfetto.dev) and
chrome://tracing: spans in, text out, streamed as the spans end.

Each run of the workflow is a process (``pid`` 1, 2 ... in the order of the trace, named
``<workflow> run <run>``), each task a thread (the root task ``tid`` 1, task N ``tid``
N + 2, named ``root`` / ``task N``). A span is a complete event (``ph`` X, times in
microseconds since the epoch); slog lines and errors are thread-scoped instant events;
a flow arrow (``ph`` s / f) joins the call that spawned a task to the task's first call.
A run no terminal record ended says how it stands (lost, unknown, still running) in its
workflow span's ``args.ending`` and ``args.ending_why``, and as the process's label.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, TextIO

from doeff_flow_core.timeline.spans import (
    EXCEPTION,
    INCOMPLETE,
    SLOG,
    WORKFLOW,
    Span,
    SpanEvent,
)
from flowctl.export.ending import Ending

ROOT_TID: Final = 1
# Spans remembered (per run) so that a task's first call, which often ends after the call
# that spawned it, can still be joined to it; older spawners get no arrow.
RECENT_SPANS: Final = 4096
PENDING_FLOWS: Final = 65536


def tid_of(task: int | None) -> int:
    return ROOT_TID if task is None else task + 2


def thread_name(task: int | None) -> str:
    return "root" if task is None else f"task {task}"


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _steps(span: Span) -> str:
    if span.first_step == span.last_step:
        return str(span.first_step)
    return f"{span.first_step}-{span.last_step}"


class _Where:
    """Where a span was drawn: enough to hang a flow arrow on it."""

    __slots__ = ("end", "start", "tid")

    def __init__(self, span: Span) -> None:
        self.tid = tid_of(span.task)
        self.start = micros(span.start)
        self.end = micros(span.end)


class ChromeWriter:
    """Writes one ``{"traceEvents": [...]}`` object to ``out``, a span at a time."""

    def __init__(self, out: TextIO, ending: Callable[[str], Ending] | None = None) -> None:
        self._out = out
        self._ending = ending  # how a run with no terminal record stands, by run key
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._first = True
        self.spans = 0
        self.runs = 0
        self._pid = 0
        self._run_open = False  # False once the run's workflow span is written
        self._threads: set[int] = set()
        self._errors: set[int] = set()  # threads that already show the run's error
        self._recent: OrderedDict[int, _Where] = OrderedDict()
        self._waiting: dict[int, list[_Where]] = {}  # spawner span id -> its tasks' calls
        self._waiting_count = 0
        self._flows = 0

    def begin(self) -> None:
        self._out.write('{"traceEvents":[')

    def end(self) -> None:
        self._out.write('],"displayTimeUnit":"ms"}\n')

    def _emit(self, event: dict[str, Any]) -> None:
        if not self._first:
            self._out.write(",\n")
        self._first = False
        self._out.write(self._encode(event))

    def _metadata(self, name: str, tid: int, args: dict[str, Any]) -> None:
        self._emit({"name": name, "ph": "M", "ts": 0, "pid": self._pid, "tid": tid, "args": args})

    def _start_run(self, span: Span) -> None:
        self.runs += 1
        self._pid = self.runs
        self._run_open = True
        self._threads.clear()
        self._errors.clear()
        self._recent.clear()
        self._waiting.clear()
        self._waiting_count = 0
        label = f"{span.workflow_id} run {span.run}" if span.run else span.workflow_id
        self._metadata("process_name", 0, {"name": label})
        self._metadata("process_sort_index", 0, {"sort_index": self._pid})

    def _thread(self, task: int | None) -> int:
        tid = tid_of(task)
        if tid not in self._threads:
            self._threads.add(tid)
            self._metadata("thread_name", tid, {"name": thread_name(task)})
            self._metadata("thread_sort_index", tid, {"sort_index": tid})
        return tid

    def add(self, span: Span) -> None:
        if not self._run_open:
            self._start_run(span)
        tid = self._thread(span.task)
        self.spans += 1
        start = micros(span.start)
        args: dict[str, Any] = {"steps": _steps(span), "status": span.status}
        if span.file is not None:
            args["file"] = span.file
        if span.line is not None:
            args["line"] = span.line
        if span.args is not None:
            args["args"] = span.args
        if span.error is not None:
            args["error"] = span.error
        if span.result is not None:
            args["result"] = span.result
        ending = None
        if span.kind == WORKFLOW and span.status == INCOMPLETE and self._ending is not None:
            ending = self._ending(span.run)
            args["ending"], args["ending_why"] = ending.word, ending.why
        self._emit(
            {
                "name": span.name,
                "cat": span.kind,
                "ph": "X",
                "ts": start,
                "dur": max(micros(span.end) - start, 0),
                "pid": self._pid,
                "tid": tid,
                "args": args,
            }
        )
        for event in span.events:
            self._instant(event, tid)
        self._link(span)
        if span.kind == WORKFLOW:
            self._run_open = False  # a run's workflow span is its last
            if ending is not None:
                self._metadata("process_labels", 0, {"labels": ending.word})

    def _instant(self, event: SpanEvent, tid: int) -> None:
        if event.kind == SLOG:
            name, category, args = event.name, "slog", dict(event.attributes)
        elif event.kind == EXCEPTION:
            if tid in self._errors:
                return  # the workflow span repeats what its innermost call shows
            self._errors.add(tid)
            name, category = str(event.attributes.get("exception.type") or "error"), "error"
            args = {"message": event.attributes.get("exception.message", "")}
        else:
            return  # effects: one per record, too many to draw; the steps say where
        self._emit(
            {
                "name": name,
                "cat": category,
                "ph": "i",
                "s": "t",
                "ts": micros(event.time),
                "pid": self._pid,
                "tid": tid,
                "args": args,
            }
        )

    def _link(self, span: Span) -> None:
        """Flow arrows between a spawning call and its tasks' first calls, whichever of
        the two ends (and so arrives) first."""
        where = _Where(span)
        for child in self._waiting.pop(span.span_id, ()):
            self._waiting_count -= 1
            self._flow(where, child)
        if span.spawned_by is not None:
            spawner = self._recent.get(span.spawned_by)
            if spawner is not None:
                self._flow(spawner, where)
            elif self._waiting_count < PENDING_FLOWS:
                self._waiting.setdefault(span.spawned_by, []).append(where)
                self._waiting_count += 1
        self._recent[span.span_id] = where
        if len(self._recent) > RECENT_SPANS:
            self._recent.popitem(last=False)

    def _flow(self, spawner: _Where, child: _Where) -> None:
        self._flows += 1
        at = min(max(child.start, spawner.start), spawner.end)
        common = {"name": "spawn", "cat": "spawn", "id": self._flows, "pid": self._pid}
        self._emit({**common, "ph": "s", "ts": at, "tid": spawner.tid})
        self._emit({**common, "ph": "f", "bp": "e", "ts": child.start, "tid": child.tid})


def write_chrome(
    spans: Iterable[Span], out: TextIO, ending: Callable[[str], Ending] | None = None
) -> ChromeWriter:
    """Every span of ``spans`` as one Trace Event Format object on ``out``; the writer
    that did it says how many spans and runs it wrote. ``ending(run)`` says how a run no
    terminal record ended stands."""
    writer = ChromeWriter(out, ending)
    writer.begin()
    for span in spans:
        writer.add(span)
    writer.end()
    return writer
