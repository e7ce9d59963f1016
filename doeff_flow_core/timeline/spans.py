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
CANCELLED: Final = "cancelled"  # open in another task when its run ended: abandoned, not failed

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
# A task's end is acted on this many records late: the task that raised a run's error is
# ended by the record that says it finished, which may come a few records before the
# run's failed record names the raise site.
ENDING_LAG: Final = 16
MAX_EFFECT_KIND: Final = 40
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
    # Where the call was made: its caller's file and line (for a task's outermost call,
    # the spawning call's); None for the workflow span and a run's outermost calls.
    site_file: str | None = None
    site_line: int | None = None
    # Seconds spent in this call's own effects, by effect type: each effect counts from
    # its record to the next record of its task (or the call's end).
    waits: tuple[tuple[str, float], ...] = ()


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
        "site",
        "span_id",
        "spawned_by",
        "start",
        "task",
        "waits",
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
        site: tuple[str, int] | None = None,
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
        self.site = site
        self.events: list[SpanEvent] = []
        self.dropped = 0
        self.waits: dict[str, float] | None = None


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
        self.sites: dict[int, tuple[str, int]] = {}  # spawned task -> where it was spawned
        # Per task: the effect its latest record performed (the call, the effect's type,
        # since when), whose time runs until the task's next record.
        self.waiting: dict[int | None, tuple[_Open, str, float]] = {}
        # Tasks said to have finished, not yet ended: task -> (when, ``records`` when
        # said), oldest first.
        self.ending: dict[int, tuple[float, int]] = {}
        # The writer said which calls raised (``failed_calls``): a failure's calls are
        # known, not inferred from its raise site.
        self.knows_failures = False
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
            site_file=span.site[0] if span.site else None,
            site_line=span.site[1] if span.site else None,
            waits=tuple(span.waits.items()) if span.waits else (),
        )

    def settle(self, task: int | None, now: float) -> None:
        """The task's latest effect has waited until ``now``: count it to its call."""
        waiting = self.waiting.pop(task, None)
        if waiting is not None:
            span, kind, since = waiting
            waits = span.waits
            if waits is None:
                waits = span.waits = {}
            waits[kind] = waits.get(kind, 0.0) + (now - since)

    def close_task(self, task: int | None, keep: int, end: float, out: list[Span]) -> None:
        stack = self.stacks.get(task)
        while stack and len(stack) > keep:
            out.append(self.close(stack.pop(), end, OK))

    def end_task(
        self,
        task: int | None,
        end: float,
        out: list[Span],
        status: str = OK,
        error: str | None = None,
        event: SpanEvent | None = None,
    ) -> None:
        """End the task's open calls; a failed task's each get the error (and its event)."""
        self.settle(task, end)
        stack = self.stacks.pop(task, None)
        while stack:
            span = stack.pop()
            if event is not None:
                self.event(span, event)
            out.append(self.close(span, end, status, error))
        self.frames.pop(task, None)
        self.steps.pop(task, None)
        self.times.pop(task, None)
        if task is not None:
            self.links.pop(task, None)
            self.sites.pop(task, None)
            self.ending.pop(task, None)

    def task_events(self, record: LiveTrace, now: float, out: list[Span]) -> None:
        if record.spawned:
            self.says_when_tasks_end = True
        for child, parent in record.spawned:
            self.links[child] = self.innermost(parent).span_id
            frames = self.frames.get(parent)
            if frames:
                self.sites[child] = (frames[-1].file, frames[-1].line)
        for finished, at in record.finished_tasks:
            self.ending.pop(finished, None)  # (said twice: kept in the order said)
            self.ending[finished] = (min(at.timestamp(), now), self.records)

    def calls_failed(self, record: LiveTrace, now: float, out: list[Span]) -> None:
        """End the calls the writer saw raise, each when it raised, with its error; the
        stack at the raise site is known for the run's own error."""
        self.knows_failures = True
        for call, at, error in record.failed_calls:
            found = self.find_call(call)
            if found is None:
                continue  # not open (already ended, or never seen)
            task, index = found
            stack = self.stacks[task]
            when = min(max(at.timestamp(), stack[index].start), now)
            self.settle(task, when)
            site = record.trace if record.status == FAILED and error == record.error else ()
            event = _exception_event(error, when, site)
            while len(stack) > index:
                span = stack.pop()
                self.event(span, event)
                out.append(self.close(span, when, ERROR, error))
            frames = self.frames.get(task)
            if frames:
                self.frames[task] = frames[:index]

    def find_call(self, call: int) -> tuple[int | None, int] | None:
        """The task and depth of the open call with this id (failures are rare: a search)."""
        for task, stack in self.stacks.items():
            for index, span in enumerate(stack):
                if span.call == call:
                    return task, index
        return None

    def age_endings(self, out: list[Span]) -> None:
        """End the tasks said to have finished ENDING_LAG records ago (the oldest first:
        one look per record, as a rule)."""
        ending = self.ending
        while ending:
            task, (at, said) = next(iter(ending.items()))
            if self.records - said < ENDING_LAG:
                return
            self.end_task(task, at, out)

    def seen_since(self, said: int) -> int:
        """Records since a task's end was said (0: said by the record at hand)."""
        return self.records - said

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
        if self.ending:
            if task in self.ending:  # a finished task's id, used again
                self.end_task(task, self.ending[task][0], out)
            self.age_endings(out)
        waiting = self.waiting.pop(task, None)
        if waiting is not None:  # ``settle``, inlined
            span, kind, since = waiting
            waits = span.waits
            if waits is None:
                span.waits = {kind: now - since}
            else:
                waits[kind] = waits.get(kind, 0.0) + (now - since)
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
                    caller = frames[depth - 1]
                    site: tuple[str, int] | None = (caller.file, caller.line)
                else:
                    spawned_by = self.links.get(task) if task is not None else None
                    parent = spawned_by or self.root.span_id
                    site = self.sites.get(task) if task is not None else None
                stack.append(
                    _Open(
                        self.next_id,
                        parent,
                        frames[depth],
                        task,
                        now,
                        step,
                        depth + 1,
                        spawned_by,
                        site,
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
        cut = effect.find("(")  # the effect's type: ``Await(...)`` -> ``Await``
        self.waiting[task] = (
            inner,
            effect[:cut] if 0 < cut <= MAX_EFFECT_KIND else effect[:MAX_EFFECT_KIND],
            now,
        )
        # ``event``, inlined: past max_events no event object is built at all.
        if len(inner.events) >= self.max_events:
            inner.dropped += 1
        elif effect.startswith(_SLOG_PREFIX) and record.last_slog:
            slog = record.last_slog
            inner.events.append(SpanEvent(slog.msg, now, SLOG, record.step, slog.fields))
        else:
            inner.events.append(SpanEvent(effect, now, EFFECT, record.step))

    def finish(self, end: float, status: str, result: str | None = None) -> list[Span]:
        """The run completed (OK) or its trace ended without a terminal record (INCOMPLETE).
        A spawned task still open when the run completed was abandoned: cancelled (when
        the writer says when tasks end; an older one's quiet tasks simply ended)."""
        out: list[Span] = []
        for ended, (at, _seen) in list(self.ending.items()):
            self.end_task(ended, at, out)
        left = CANCELLED if status == OK and self.says_when_tasks_end else status
        for task in list(self.stacks):
            self.end_task(task, end, out, status if task is None else left)
        out.append(self.close(self.root, end, status, None, result))
        return out

    def fail(self, record: LiveTrace, end: float) -> list[Span]:
        """The run failed. The task that raised (the one whose calls the raise site ends
        with) and each task that awaited it up to the root unwound: their open calls are
        failed, each with the error. Calls open in other tasks were abandoned: cancelled."""
        out: list[Span] = []
        error = record.error or "failed"
        event = _exception_event(error, end, record.trace)
        if self.knows_failures:
            # The calls that raised have ended (``calls_failed``): what is left open was
            # abandoned, and tasks the failed record says finished were unwound.
            for ended, (at, said) in list(self.ending.items()):
                self.end_task(ended, at, out, CANCELLED if self.seen_since(said) == 0 else OK)
            for task in list(self.stacks):
                self.end_task(task, end, out, CANCELLED)
            self.event(self.root, event)
            out.append(self.close(self.root, end, ERROR, error))
            return out
        raised = self.raising_task(record.trace)
        failed = self.chain_of(raised)
        # Tasks the failed record says finished, after the one that raised when it says
        # that one too, were unwound when the run ended; those said earlier completed.
        now_said = [t for t, (_at, said) in self.ending.items() if self.seen_since(said) == 0]
        after = now_said.index(raised) if raised in now_said else -1
        for ended, (at, said) in list(self.ending.items()):
            if ended not in failed:
                abandoned = self.seen_since(said) == 0 and now_said.index(ended) > after
                self.end_task(ended, at, out, CANCELLED if abandoned else OK)
        for task in list(self.stacks):
            if task in failed:
                when = self.ending[task][0] if task in self.ending else end
                self.end_task(task, when, out, ERROR, error, event)
            else:
                self.end_task(task, end, out, CANCELLED)
        self.event(self.root, event)
        out.append(self.close(self.root, end, ERROR, error))
        return out

    def raising_task(self, raise_site: tuple[TraceFrame, ...]) -> int | None:
        """The task whose open calls reach deepest into the raise site (outermost first,
        through the tasks that awaited it); a tie goes to a task that had finished (see
        ``rank``), then to the one heard from last. None (the root task) when none matches."""
        best: tuple[int, int, int, float] = (0, 0, 0, 0.0)
        chosen: int | None = None
        # Finished tasks first: the first the failed record names (the others it names
        # may have been unwound because of it), then those named before, latest first.
        named = sorted(self.ending.items(), key=lambda item: self.seen_since(item[1][1]))
        rank = {task: len(named) - i for i, (task, _when) in enumerate(named)}
        for task, stack in self.stacks.items():
            if task is None or not stack:
                continue
            reach, matched = _reach(stack, raise_site)
            if not matched:
                continue
            score = (reach, matched, rank.get(task, 0), self.times.get(task, 0.0))
            if score > best:
                best, chosen = score, task
        return chosen

    def chain_of(self, task: int | None) -> set[int | None]:
        """``task`` and each task whose call spawned it, up to the root task."""
        tasks: set[int | None] = {None}
        owner = {span.span_id: t for t, stack in self.stacks.items() for span in stack}
        while task is not None and task not in tasks:
            tasks.add(task)
            spawner = self.links.get(task)
            task = owner.get(spawner) if spawner is not None else None
        return tasks


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

    def close(self) -> list[Span]:
        """End of the trace: whatever is still open ends at the last record, incomplete."""
        run, self._run = self._run, None
        if run is None:
            return []
        return run.finish(run.last_time, INCOMPLETE)


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


def _reach(stack: list[_Open], raise_site: tuple[TraceFrame, ...]) -> tuple[int, int]:
    """How deep into the raise site a task's open calls reach, and how many of them
    match it (its outermost call matched at some depth, then call by call)."""
    outer = stack[0]
    for start, frame in enumerate(raise_site):
        if frame.function == outer.function and frame.file == outer.file:
            matched = 1
            for span, deeper in zip(stack[1:], raise_site[start + 1 :]):  # noqa: B905
                if span.function != deeper.function or span.file != deeper.file:
                    break
                matched += 1
            return start + matched, matched
    return 0, 0


def _exception_event(error: str, now: float, raise_site: tuple[TraceFrame, ...] = ()) -> SpanEvent:
    """OpenTelemetry's exception event: type, message and (when known) the stack at the
    raise site, in Python's traceback form."""
    kind, _, message = error.partition(": ")
    attributes = {"exception.type": kind, "exception.message": message or kind}
    if raise_site:
        lines = ["Traceback (most recent call last):"]
        lines += [
            f'  File "{frame.file}", line {frame.line}, in {frame.function}' for frame in raise_site
        ]
        lines.append(error)
        attributes["exception.stacktrace"] = "\n".join(lines)
    return SpanEvent(EXCEPTION, now, EXCEPTION, None, attributes)
