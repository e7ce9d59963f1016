"""Timelines: a trace's records turned into nested spans, one per ``@do`` call.

Pure and incremental: ``SpanBuilder.add(record)`` returns the spans that record ended,
so a trace of any length becomes spans in memory bounded by what is open at once (the
calls on each task's stack, and at most ``max_events`` events per span).

A record's stack says which calls were open when its effect ran. A call is the same one
from record to record while its function and file stay at the same depth and, when the
frames carry ``call`` ids, its id does not change: a loop calling one function from one
line gives a span per call. Frames without ids (older traces) cannot say that: there the
call is the same while its caller's line does not move (a caller that moved on has
returned from it, even into a new call of the same function), and frames whose ``args``
differ are different calls. A call's span starts at the first record that has it
on the stack and ends at the first record of its task without it, when its task
finishes (``finished_tasks``), or at the run's terminal record; a run with no terminal
record ends at its last record with its open spans marked ``incomplete``.

Each run gets a workflow span holding the root task's outermost calls; a spawned
task's outermost calls hang off the call that spawned it (``spawned``). A trace from a
writer that never says when tasks finish (no ``spawned`` either) ends a task that has been
quiet for TASK_QUIET seconds at its last record, and no run keeps more than
MAX_OPEN_TASKS tasks open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from doeff_flow_core.records import COMPLETED, FAILED, RUNNING, LiveTrace
from doeff_flow_core.timeline.openrun import (
    ENDING_LAG,
    MAX_OPEN_TASKS,
    TASK_QUIET,
    TIDY_EVERY,
    OpenRun,
)
from doeff_flow_core.timeline.span import (
    CALL,
    CANCELLED,
    EFFECT,
    ERROR,
    EXCEPTION,
    INCOMPLETE,
    MAX_EVENTS,
    OK,
    SLOG,
    WORKFLOW,
    Span,
    SpanEvent,
    run_key,
)

__all__ = [
    "CALL",
    "CANCELLED",
    "EFFECT",
    "ENDING_LAG",
    "ERROR",
    "EXCEPTION",
    "INCOMPLETE",
    "MAX_EVENTS",
    "MAX_OPEN_TASKS",
    "OK",
    "SLOG",
    "TASK_QUIET",
    "TIDY_EVERY",
    "WORKFLOW",
    "Span",
    "SpanBuilder",
    "SpanEvent",
    "run_key",
    "spans_of",
]


class SpanBuilder:
    """Records in, finished spans out; one builder follows one workflow's trace."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._run: OpenRun | None = None

    def add(self, record: LiveTrace, updated: float | None = None) -> list[Span]:
        """The spans ``record`` ended (possibly a whole earlier run that never finished).
        ``updated``: its ``updated_at`` as a timestamp, when the caller has that already."""
        out: list[Span] = []
        run = self._run
        if run is not None and (run.run != run_key(record) or record.step <= run.last_step):
            out.extend(self.close())  # a new run appended to the same file
            run = None
        if run is None:
            run = self._run = OpenRun(record, self.max_events)
        now = record.updated_at.timestamp() if updated is None else updated
        if now < run.last_time:  # a clock stepped back: time in a timeline never does
            now = run.last_time
        run.last_time = now
        run.last_step = record.step
        if record.spawned or record.finished_tasks:
            run.task_events(record, now, out)
        if record.failed_calls:
            run.calls_failed(record, now, out)
        if record.status == RUNNING:
            run.running(record, now, out)
        elif record.status == COMPLETED:
            out.extend(run.finish(now, OK, record.result))
            self._run = None
        elif record.status == FAILED:
            out.extend(run.fail(record, now))
            self._run = None
        return out

    def close(self, ending: str | None = None) -> list[Span]:
        """End of the trace: whatever is still open ends at the last record, incomplete;
        ``ending`` says how the run stands, when the caller knows (``lost``)."""
        run, self._run = self._run, None
        if run is None:
            return []
        spans = run.finish(run.last_time, INCOMPLETE)
        if ending is not None and spans:  # the workflow span comes last
            spans[-1] = spans[-1]._replace(ending=ending)
        return spans


def spans_of(records: Iterable[LiveTrace], max_events: int = MAX_EVENTS) -> Iterator[Span]:
    """Every span of ``records`` (one workflow's, oldest first), each as soon as it ends."""
    builder = SpanBuilder(max_events)
    for record in records:
        yield from builder.add(record)
    yield from builder.close()
