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

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from doeff_flow_core.records import COMPLETED, FAILED, RUNNING, LiveTrace, TraceFrame

OK: Final = "ok"
ERROR: Final = "error"
INCOMPLETE: Final = "incomplete"

EFFECT: Final = "effect"
SLOG: Final = "slog"
EXCEPTION: Final = "exception"  # the OpenTelemetry event name for an error

WORKFLOW: Final = "workflow"
CALL: Final = "call"

# OpenTelemetry SDKs keep 128 events per span by default; the rest are counted.
MAX_EVENTS: Final = 128
TIDY_EVERY: Final = 1024  # records between looks for tasks to end (see _Run.tidy)
TASK_QUIET: Final = 60.0  # seconds; as flowctl watch forgets a quiet task
MAX_OPEN_TASKS: Final = 10_000
_SLOG_PREFIX: Final = "slog("


_NO_ATTRIBUTES: Final[Mapping[str, str]] = MappingProxyType({})


class SpanEvent(NamedTuple):
    """A point in time inside a span: an effect, a slog line, or the error. (A named
    tuple, not a dataclass: one is built per effect, and this is the cheapest immutable
    record Python has.)"""

    name: str
    time: float  # seconds since the epoch
    kind: str  # EFFECT, SLOG or EXCEPTION
    step: int | None = None  # the record's step (None for the error)
    attributes: Mapping[str, str] = _NO_ATTRIBUTES  # slog fields; exception type, message


class Span(NamedTuple):
    """One ``@do`` call (kind CALL) or one run of a workflow (kind WORKFLOW). (A named
    tuple too: flowd builds one for every call every workflow makes, and a frozen
    dataclass of this many fields costs several times more to build.)

    ``span_id`` counts from 1 within its run in the order spans opened; ``parent_id`` is
    the enclosing call, the spawning call for a task's outermost calls, or the workflow
    span; ``spawned_by`` is set on a task's outermost calls only.
    """

    workflow_id: str
    run: str
    span_id: int
    parent_id: int | None
    kind: str
    name: str
    task: int | None
    file: str | None
    line: int | None
    start: float
    end: float
    status: str  # OK, ERROR or INCOMPLETE
    first_step: int
    last_step: int
    error: str | None = None
    result: str | None = None
    events: tuple[SpanEvent, ...] = ()
    dropped_events: int = 0
    spawned_by: int | None = None
    depth: int = 0  # 0 for the workflow span, 1 for a task's outermost call
    pid: int | None = None
    host: str | None = None
    args: str | None = None  # the call's arguments, when its frame carried them


class _Open:
    """A span still open: mutable while records arrive."""

    __slots__ = (
        "args",
        "call",
        "depth",
        "dropped",
        "events",
        "file",
        "first_step",
        "function",
        "line",
        "parent_id",
        "span_id",
        "spawned_by",
        "start",
        "task",
    )

    def __init__(
        self,
        span_id: int,
        parent_id: int | None,
        frame: TraceFrame | None,
        task: int | None,
        start: float,
        step: int,
        depth: int,
        spawned_by: int | None = None,
    ) -> None:
        self.span_id = span_id
        self.parent_id = parent_id
        self.function = frame.function if frame else ""
        self.file = frame.file if frame else None
        self.line = frame.line if frame else None
        self.call = frame.call if frame else None
        self.args = frame.args if frame else None
        self.task = task
        self.start = start
        self.first_step = step
        self.depth = depth
        self.spawned_by = spawned_by
        self.events: list[SpanEvent] = []
        self.dropped = 0


class _Run:
    """What is open in one run of a workflow."""

    def __init__(self, first: LiveTrace, max_events: int) -> None:
        self.workflow_id = first.workflow_id
        self.run = run_key(first)
        self.pid = first.pid
        self.host = first.host
        self.max_events = max_events
        self.next_id = 2
        start = min(first.started_at.timestamp(), first.updated_at.timestamp())
        self.root = _Open(1, None, None, None, start, first.step, 0)
        self.stacks: dict[int | None, list[_Open]] = {}
        # Per task: the stack, step and time of its latest record. Every call open in a
        # task was on the stack at that record (a record without it would have ended it).
        self.frames: dict[int | None, tuple[TraceFrame, ...]] = {}
        self.steps: dict[int | None, int] = {}
        self.times: dict[int | None, float] = {}
        self.links: dict[int, int] = {}  # spawned task -> the spawning call's span id
        self.last_time = start
        self.last_step = first.step
        # A writer that records ``spawned`` also records when tasks finish; one that does
        # not (an older core) never says, so its quiet tasks are taken as finished.
        self.says_when_tasks_end = False
        self.records = 0

    def innermost(self, task: int | None) -> _Open:
        stack = self.stacks.get(task)
        return stack[-1] if stack else self.root

    def event(self, span: _Open, event: SpanEvent) -> None:
        if len(span.events) < self.max_events:
            span.events.append(event)
        else:
            span.dropped += 1

    def close(
        self,
        span: _Open,
        end: float,
        status: str,
        error: str | None = None,
        result: str | None = None,
    ) -> Span:
        kind = WORKFLOW if span is self.root else CALL
        return Span(
            workflow_id=self.workflow_id,
            run=self.run,
            span_id=span.span_id,
            parent_id=span.parent_id,
            kind=kind,
            name=self.workflow_id if kind == WORKFLOW else span.function,
            task=span.task,
            file=span.file,
            line=span.line,
            start=span.start,
            end=max(end, span.start),
            status=status,
            first_step=span.first_step,
            last_step=self.last_step if kind == WORKFLOW else self.steps[span.task],
            error=error,
            result=result,
            events=tuple(span.events),
            dropped_events=span.dropped,
            spawned_by=span.spawned_by,
            depth=span.depth,
            pid=self.pid,
            host=self.host,
            args=span.args,
        )

    def close_task(self, task: int | None, keep: int, end: float, out: list[Span]) -> None:
        stack = self.stacks.get(task)
        while stack and len(stack) > keep:
            out.append(self.close(stack.pop(), end, OK))

    def end_task(self, task: int | None, end: float, out: list[Span]) -> None:
        self.close_task(task, 0, end, out)
        self.stacks.pop(task, None)
        self.frames.pop(task, None)
        self.steps.pop(task, None)
        self.times.pop(task, None)
        if task is not None:
            self.links.pop(task, None)

    def task_events(self, record: LiveTrace, now: float, out: list[Span]) -> None:
        if record.spawned:
            self.says_when_tasks_end = True
        for child, parent in record.spawned:
            self.links[child] = self.innermost(parent).span_id
        for finished, at in record.finished_tasks:
            self.end_task(finished, min(at.timestamp(), now), out)

    def tidy(self, now: float, out: list[Span]) -> None:
        """Every TIDY_EVERY records: end the spawned tasks an older writer left quiet for
        TASK_QUIET seconds, and keep at most MAX_OPEN_TASKS open (the least recently
        active end first), so memory stays bounded however many tasks a run spawns. Such
        a task ends at its last record."""
        quiet = (
            []
            if self.says_when_tasks_end
            else [
                task
                for task, seen in self.times.items()
                if task is not None and now - seen > TASK_QUIET
            ]
        )
        for task in quiet:
            self.end_task(task, self.times[task], out)
        surplus = len(self.times) - MAX_OPEN_TASKS
        if surplus > 0:
            spawned = [(seen, task) for task, seen in self.times.items() if task is not None]
            for seen, task in sorted(spawned, key=lambda pair: pair[0])[:surplus]:
                self.end_task(task, seen, out)

    def running(self, record: LiveTrace, now: float, out: list[Span]) -> None:
        # Once per record: kept to plain loops and attribute reads.
        task = record.task
        frames = record.trace
        step = record.step
        stack = self.stacks.get(task)
        if frames:  # a record without a stack (an effect of no call) changes no call
            if stack is None:
                stack = self.stacks[task] = []
            kept = _common_calls(stack, self.frames.get(task, ()), frames)
            if kept < len(stack):
                self.close_task(task, kept, now, out)
            for depth in range(kept, len(frames)):
                if depth:
                    parent, spawned_by = stack[depth - 1].span_id, None
                else:
                    spawned_by = self.links.get(task) if task is not None else None
                    parent = spawned_by or self.root.span_id
                stack.append(
                    _Open(
                        self.next_id, parent, frames[depth], task, now, step, depth + 1, spawned_by
                    )
                )
                self.next_id += 1
            self.frames[task] = frames
        self.steps[task] = step
        self.times[task] = now
        self.records += 1
        if not self.records % TIDY_EVERY:
            self.tidy(now, out)
        inner = stack[-1] if stack else self.root
        effect = record.current_effect
        if effect is None:
            return
        # ``event``, inlined: past max_events no event object is built at all.
        if len(inner.events) >= self.max_events:
            inner.dropped += 1
        elif effect.startswith(_SLOG_PREFIX) and record.last_slog:
            slog = record.last_slog
            inner.events.append(SpanEvent(slog.msg, now, SLOG, record.step, slog.fields))
        else:
            inner.events.append(SpanEvent(effect, now, EFFECT, record.step))

    def finish(self, end: float, status: str, error: str | None, result: str | None) -> list[Span]:
        """Close everything open; a failure ends each open call with the error."""
        out: list[Span] = []
        if status == ERROR and error is not None:
            # The error passed through every open call: it shows on the innermost.
            for stack in self.stacks.values():
                if stack:
                    self.event(stack[-1], _exception_event(error, end))
            self.event(self.root, _exception_event(error, end))
        for task in list(self.stacks):
            stack = self.stacks[task]
            while stack:
                out.append(self.close(stack.pop(), end, status, error))
        self.stacks.clear()
        workflow = self.close(self.root, end, status, error, result)
        out.append(workflow)
        return out


class SpanBuilder:
    """Records in, finished spans out; one builder follows one workflow's trace."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._run: _Run | None = None

    def add(self, record: LiveTrace, updated: float | None = None) -> list[Span]:
        """The spans ``record`` ended (possibly a whole earlier run that never finished).
        ``updated``: its ``updated_at`` as a timestamp, when the caller has that already."""
        out: list[Span] = []
        run = self._run
        if run is not None and (run.run != run_key(record) or record.step <= run.last_step):
            out.extend(self.close())  # a new run appended to the same file
            run = None
        if run is None:
            run = self._run = _Run(record, self.max_events)
        now = record.updated_at.timestamp() if updated is None else updated
        if now < run.last_time:  # a clock stepped back: time in a timeline never does
            now = run.last_time
        run.last_time = now
        run.last_step = record.step
        if record.spawned or record.finished_tasks:
            run.task_events(record, now, out)
        if record.status == RUNNING:
            run.running(record, now, out)
        elif record.status == COMPLETED:
            out.extend(run.finish(now, OK, None, record.result))
            self._run = None
        elif record.status == FAILED:
            out.extend(run.finish(now, ERROR, record.error or "failed", None))
            self._run = None
        return out

    def close(self) -> list[Span]:
        """End of the trace: whatever is still open ends at the last record, incomplete."""
        run, self._run = self._run, None
        if run is None:
            return []
        return run.finish(run.last_time, INCOMPLETE, None, None)


def run_key(record: LiveTrace) -> str:
    """The run a record belongs to: its ``run``, or for a trace written without run ids
    (the original format) the run's start time, so that re-runs still differ."""
    return record.run or record.started_at.isoformat()


def spans_of(records: Iterable[LiveTrace], max_events: int = MAX_EVENTS) -> Iterator[Span]:
    """Every span of ``records`` (one workflow's, oldest first), each as soon as it ends."""
    builder = SpanBuilder(max_events)
    for record in records:
        yield from builder.add(record)
    yield from builder.close()


def _common_calls(
    stack: list[_Open], previous: tuple[TraceFrame, ...], frames: tuple[TraceFrame, ...]
) -> int:
    """How many of the open calls (outermost first; ``previous`` is the stack they were
    last seen at) ``frames`` still has on its stack."""
    depth = len(stack)
    if depth and len(frames) >= depth:
        # The usual record: the same calls as before, the innermost at another line.
        # Parsed frames are shared objects, so equal callers compare by identity here
        # (equal frames have equal call ids and args too).
        inner, before = frames[depth - 1], previous[depth - 1]
        if (
            inner.function == before.function
            and inner.file == before.file
            and inner.call == before.call
            and inner.args == before.args
            and frames[: depth - 1] == previous[: depth - 1]
        ):
            return depth
    kept = 0
    for span, frame in zip(stack, frames):  # noqa: B905 - the shorter one ends it
        if span.function != frame.function or span.file != frame.file:
            break
        if span.call is not None and frame.call is not None:
            if span.call != frame.call:
                break  # another invocation, from the same line or not
        elif span.args is not None and frame.args is not None and span.args != frame.args:
            break  # other arguments: another invocation
        elif kept and previous[kept - 1].line != frames[kept - 1].line:
            break  # the caller moved on: this is a new call
        kept += 1
    return kept


def _exception_event(error: str, now: float) -> SpanEvent:
    kind, _, message = error.partition(": ")
    attributes = {"exception.type": kind, "exception.message": message or kind}
    return SpanEvent(EXCEPTION, now, EXCEPTION, None, attributes)
