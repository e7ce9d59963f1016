"""One run of a workflow while its records arrive: the calls open in each task, what each
task waits in, the tasks said to have finished, and how a run's end (completed, failed,
or a trace that stops) closes them. ``spans.SpanBuilder`` drives it; see ``spans`` for
the rules a call's span follows.
"""

from __future__ import annotations

from typing import Final

from doeff_flow_core.records import FAILED, LiveTrace, TraceFrame
from doeff_flow_core.timeline.failures import chain_of, raising_task
from doeff_flow_core.timeline.opencall import OpenCall, common_calls
from doeff_flow_core.timeline.span import (
    CALL,
    CANCELLED,
    EFFECT,
    ERROR,
    OK,
    SLOG,
    WORKFLOW,
    Span,
    SpanEvent,
    exception_event,
    run_key,
)

TIDY_EVERY: Final = 1024  # records between looks for tasks to end (see OpenRun.tidy)
TASK_QUIET: Final = 60.0  # seconds; as flowctl watch forgets a quiet task
MAX_OPEN_TASKS: Final = 10_000
# A task's end is acted on this many records late: the task that raised a run's error is
# ended by the record that says it finished, which may come a few records before the
# run's failed record names the raise site.
ENDING_LAG: Final = 16
MAX_EFFECT_KIND: Final = 40
_SLOG_PREFIX: Final = "slog("


class OpenRun:
    """What is open in one run of a workflow."""

    def __init__(self, first: LiveTrace, max_events: int) -> None:
        self.workflow_id = first.workflow_id
        self.run = run_key(first)
        self.pid = first.pid
        self.host = first.host
        self.max_events = max_events
        self.next_id = 2
        start = min(first.started_at.timestamp(), first.updated_at.timestamp())
        self.root = OpenCall(1, None, None, None, start, first.step, 0)
        self.stacks: dict[int | None, list[OpenCall]] = {}
        # Per task: the stack, step and time of its latest record. Every call open in a
        # task was on the stack at that record (a record without it would have ended it).
        self.frames: dict[int | None, tuple[TraceFrame, ...]] = {}
        self.steps: dict[int | None, int] = {}
        self.times: dict[int | None, float] = {}
        self.links: dict[int, int] = {}  # spawned task -> the spawning call's span id
        self.sites: dict[int, tuple[str, int]] = {}  # spawned task -> where it was spawned
        # Per task: the effect its latest record performed (the call, the effect's type,
        # since when), whose time runs until the task's next record.
        self.waiting: dict[int | None, tuple[OpenCall, str, float]] = {}
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

    def innermost(self, task: int | None) -> OpenCall:
        stack = self.stacks.get(task)
        return stack[-1] if stack else self.root

    def event(self, span: OpenCall, event: SpanEvent) -> None:
        if len(span.events) < self.max_events:
            span.events.append(event)
        else:
            span.dropped += 1

    def close(
        self,
        span: OpenCall,
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
            event = exception_event(error, when, site)
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
            kept = common_calls(stack, self.frames.get(task, ()), frames)
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
                    OpenCall(
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
        event = exception_event(error, end, record.trace)
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
        raised = raising_task(self.stacks, self.ending, self.records, self.times, record.trace)
        failed = chain_of(self.stacks, self.links, raised)
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
