"""The doeff observer: one ``running`` record per effect, a terminal record at the end.

On Python 3.12+ effects and their exact stacks come from the interpreter's generator
events (``monitor``): every effect the workflow performs, wherever it is answered, at
the cost of a few attribute reads per effect. ``DOEFF_FLOW_TRACER=hooks`` or a busy
``sys.monitoring`` selects the fallback below, which Python 3.11 always uses.

Fallback: two doeff 0.8 hooks work together. ``WithObserve`` sees every effect performed in its
scope, including those the workflow's own inner handlers answer, but gets no stack; a
pass-through handler installed innermost sees the effects that reach it and asks for
their stack with ``GetTraceback``.

The hot path is kept to almost nothing: the observer is the buffer's own ``append``
(no Python frame per effect), and the handler replaces that bare effect with
``(effect, time, frames, task)`` when the effect reaches it. An effect nobody replaces
was answered inside the workflow; it is written with the last exact stack of its task,
marked ``trace_exact: false``. Records are encoded and written in batches by a
background thread, so none waits for the workflow's next effect.

``doeff`` is imported inside functions only: importing this module needs the standard
library alone.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from doeff_flow_core.clock import IsoClock
from doeff_flow_core.encode import (
    Entry,
    Frame,
    RecordEncoder,
    StackCache,
    TaskEvent,
    describe_error,
    describe_result,
)
from doeff_flow_core.ids import validate_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME, resolve_trace_dir
from doeff_flow_core.liveness import process_start_ticks, this_host
from doeff_flow_core.monitor import MAX_BUFFERED, Context, dispatcher, monitoring_available
from doeff_flow_core.records import COMPLETED, FAILED
from doeff_flow_core.registry import register_trace_dir
from doeff_flow_core.render import MAX_EFFECT_CHARS, render_effect
from doeff_flow_core.stacktext import StackText
from doeff_flow_core.writer import FLUSH_INTERVAL, Flusher, Rotation, TraceFile, WriterLock

# How far back the handler looks for its effect when others were observed after it.
CLAIM_WINDOW = 16

_INTERNAL_PATHS = ("/doeff/", "/doeff_vm/", "/doeff_core_effects/", "/doeff_flow_core/")
Program = Any
TRACER_VARIABLE = "DOEFF_FLOW_TRACER"  # "hooks": the fallback tracer even on 3.12+
ARGS_VARIABLE = "DOEFF_FLOW_ARGS"  # "0": no arguments in records


def _args_wanted(capture_args: bool | None) -> bool:
    if capture_args is not None:
        return capture_args
    return os.environ.get(ARGS_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def _exact_context_possible() -> bool:
    """Whether runs can be traced from generator events, saying why not once."""
    if not monitoring_available() or os.environ.get(TRACER_VARIABLE) == "hooks":
        return False
    if not dispatcher().claim():
        print(
            "doeff-flow: every sys.monitoring tool id is taken; tracing with doeff's hooks",
            file=sys.stderr,
        )
        return False
    return True


class TraceObserver:
    """Traces one run of one workflow to ``<trace_dir>/<workflow_id>/trace.jsonl``.

    Creating it takes the workflow's writer lock and opens the file, raising
    ``InvalidWorkflowId``, ``BadTraceSetting``, ``WorkflowBusy`` or ``TraceDirUnwritable``
    before anything runs; ``observe(program)`` wraps a program; ``close()`` writes the
    terminal record and releases the lock. ``max_trace_bytes`` and ``keep_rotated`` set
    rotation (default ``$DOEFF_FLOW_MAX_TRACE_BYTES`` or 64 MiB, ``$DOEFF_FLOW_KEEP_ROTATED``
    or 3). ``capture_args=False`` (or ``$DOEFF_FLOW_ARGS=0``) leaves each call's
    arguments out of the records, for workflows whose arguments are secrets.
    """

    def __init__(
        self,
        workflow_id: str,
        trace_dir: str | os.PathLike[str] | None = None,
        *,
        max_trace_bytes: int | None = None,
        keep_rotated: int | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        capture_args: bool | None = None,
    ) -> None:
        self.workflow_id = validate_workflow_id(workflow_id)
        rotation = Rotation.from_environment(max_trace_bytes, keep_rotated)
        self.trace_dir = resolve_trace_dir(trace_dir).absolute()
        self.path = self.trace_dir / self.workflow_id / TRACE_FILE_NAME
        self._writer_lock = WriterLock(self.path.parent, self.workflow_id)
        try:
            self._file = TraceFile(self.path, rotation)
        except BaseException:
            self._writer_lock.release()
            raise
        register_trace_dir(self.trace_dir)
        from doeff_core_effects import SlogEffect

        self.run_id = uuid.uuid4().hex[:12]
        self._context: Context | None = None
        self.exact = _exact_context_possible()
        self._encoder = RecordEncoder(
            workflow_id=self.workflow_id,
            run=self.run_id,
            started_at=IsoClock().format(time.time()),
            pid=os.getpid(),
            host=this_host(),
            pid_start=process_start_ticks(os.getpid()),
            slog_type=SlogEffect,
            stacks=StackText() if self.exact else None,
        )
        self._slog_type: type = SlogEffect
        self._stacks = StackCache()
        self.task: int | None = None  # the scheduler task running now (None: the root)
        # Bare effects (observed, not yet claimed) and claimed (effect, time, frames, task).
        self._buffer: list[object] = []
        # The bare effect left last in the buffer at the previous flush: if it is still
        # there one flush later, no handler will claim it.
        self._unclaimed_candidate: object = None
        self._lock = threading.Lock()  # guards the buffer and the encoder
        self._outbox: list[str] = []  # encoded, not yet written
        self._write_lock = threading.Lock()
        self._outcome: tuple[str, str | None, str | None, list[Frame]] | None = None
        self._closed = False
        if self.exact:
            self._context = Context(
                self._buffer, self._hand_over, SlogEffect, _args_wanted(capture_args)
            )
        self._flusher = Flusher(self.flush, flush_interval)
        self._flusher.start()
        _task_routing.attach(self)

    def enter_task(self, task: int | None) -> None:
        """The scheduler switched to ``task`` (None: the root)."""
        self.task = task
        if self._context is not None:
            self._context.enter_task(task)

    # -- hot path -------------------------------------------------------------------

    def _claim_earlier(self, effect: object, entry: tuple[Any, ...]) -> None:
        """Claim ``effect`` when an inner handler performed effects of its own before
        passing it on, so it is no longer last in the buffer."""
        with self._lock:
            buffer = self._buffer
            for index in range(len(buffer) - 1, max(len(buffer) - CLAIM_WINDOW, 0) - 1, -1):
                if buffer[index] is effect:
                    buffer[index] = entry
                    return

    # -- flushing -------------------------------------------------------------------

    def encode_buffered(self, *, final: bool = False) -> None:
        """Move buffered effects into the outbox as encoded lines."""
        with self._lock:
            buffer = self._buffer
            count = len(buffer)
            if not count:
                return
            last = buffer[count - 1]
            if not final and type(last) is not tuple and last is not self._unclaimed_candidate:
                # The last effect may be on its way to the handler: leave it one interval.
                self._unclaimed_candidate = last
                count -= 1
            batch: list[Entry] = buffer[:count]
            del buffer[:count]
            try:
                self._outbox.append(self._encoder.running(batch, time.time()))
            except Exception as exc:  # pragma: no cover - defensive
                print(f"doeff-flow: could not encode records: {exc!r}", file=sys.stderr)

    def flush(self, *, final: bool = False) -> None:
        """Encode what is buffered and write the outbox: one ``write`` per encoded batch
        (usually one), so that rotation, checked between writes, keeps parts near their
        size limit even when the flusher fell behind."""
        self.encode_buffered(final=final)
        with self._write_lock:
            outbox = self._outbox
            count = len(outbox)
            batches = outbox[:count]
            del outbox[:count]
            for text in batches:
                # The write releases the GIL: the workflow runs on meanwhile.
                self._file.write(text)

    def _hand_over(self) -> None:
        """From the workflow's thread: encode now, let the flusher thread write."""
        self.encode_buffered()
        self._flusher.wake()

    # -- program wrapping -----------------------------------------------------------

    def observe(self, program: Program) -> Program:
        """``program`` traced: the observer outermost, the tracing handler innermost."""
        return self.instrument(program)

    def instrument(self, program: Program, handlers: Sequence[Any] = ()) -> Program:
        """``program`` under ``handlers`` (first outermost), traced.

        The tracing handler sits inside ``handlers`` so it sees each effect the body
        performs with its stack; the observer sits outside them so it also sees the
        effects that ``handlers`` answer and perform.
        """
        from doeff import WithObserve, do, with_handlers
        from doeff.program import handler

        context = self._context
        if context is not None:
            traced = with_handlers(handlers, program)
        else:
            traced = with_handlers(handlers, handler(_stack_handler(self))(program))

        @do  # type: ignore[untyped-decorator]
        def traced_by_doeff_flow() -> Any:
            active = False
            # This run's VM drives its bodies from the frame that resumes this one.
            entry = sys._getframe().f_back
            if context is not None:
                context.entry = entry
                active = dispatcher().activate(context)
            _task_routing.claim(self, entry)
            del entry
            try:
                value = yield traced
            except BaseException as exc:
                self.record_failure(exc)
                raise
            finally:
                _task_routing.release(self)
                if context is not None and active:
                    dispatcher().deactivate(context)
            self.record_success(value)
            return value

        if context is not None:
            return traced_by_doeff_flow()
        return WithObserve(self._buffer.append, traced_by_doeff_flow())

    def record_success(self, value: object) -> None:
        self._outcome = (COMPLETED, describe_result(value), None, [])

    def record_failure(self, error: BaseException) -> None:
        if self._outcome is None or self._outcome[0] != FAILED:
            self._outcome = (FAILED, None, describe_error(error), raise_site(error))

    def close(self, error: BaseException | None = None) -> None:
        """Flush, then write the terminal record (once)."""
        if self._closed:
            return
        self._closed = True
        if self._context is not None:
            dispatcher().deactivate(self._context)
        _task_routing.detach(self)
        self._flusher.stop()
        self.flush(final=True)
        if self._outcome is None and error is not None:
            self.record_failure(error)
        if self._outcome is not None:
            status, result, message, frames = self._outcome
            with self._lock:
                line = self._encoder.terminal(
                    status, time.time(), result=result, error=message, frames=frames
                )
                self._file.write(line)
        self._file.close()
        self._writer_lock.release()


def _stack_handler(tracer: TraceObserver) -> Any:
    """The pass-through handler that claims each effect reaching it, with its stack.

    This runs once per effect, so the common cases are inlined: a repr that needs no
    cleaning, and a stack met before (``StackCache``). Entries hold only text and
    numbers, leaving the garbage collector nothing to trace.
    """
    from doeff import GetTraceback, Pass, do

    buffer = tracer._buffer
    now = time.time
    slog_type = tracer._slog_type
    by_site = tracer._stacks.by_site
    encode_stack = tracer._stacks.encode

    @do  # type: ignore[untyped-decorator]
    def doeff_flow_tracer(effect: Any, k: Any) -> Any:
        frames = yield GetTraceback(k)
        try:
            text = repr(effect)
            if len(text) > MAX_EFFECT_CHARS or " at 0x" in text:
                text = render_effect(effect)
            inner = frames[0] if frames else None
            hit = by_site.get((inner[2], inner[1])) if inner else None
            stack = hit[1] if hit is not None and hit[0] == frames else encode_stack(frames)
            # An entry as RecordEncoder.running reads it.
            entry = (text, now(), tracer.task, stack, effect if type(effect) is slog_type else None)
            if buffer and buffer[-1] is effect:
                buffer[-1] = entry
                if len(buffer) > MAX_BUFFERED:
                    tracer._hand_over()
            else:
                tracer._claim_earlier(effect, entry)
        except Exception:  # tracing must never hurt the workflow
            pass
        return (yield Pass(effect, k))

    return doeff_flow_tracer


def raise_site(error: BaseException) -> list[Frame]:
    """The workflow's frames from the outermost call to the raise, outermost first."""
    frames: list[Frame] = []
    for summary in traceback.extract_tb(error.__traceback__):
        if summary.name == "traced_by_doeff_flow" or any(
            part in summary.filename for part in _INTERNAL_PATHS
        ):
            continue
        frames.append((summary.name, summary.filename, summary.lineno or 0))
    return frames


class _Scope:
    """One VM's scheduler on a thread: the task running now, and which traced runs own
    which tasks (the innermost last). A traced run inside another one's body runs a VM
    of its own, with tasks numbered from the start again: a scope of its own."""

    def __init__(self, entry: object) -> None:
        self.entry = entry  # the frame that runs this VM
        self.task: int | None = None
        self.owners: dict[int | None, list[TraceObserver]] = {}
        self.runs = 0

    def owner(self, task: int | None) -> TraceObserver | None:
        owners = self.owners.get(task)
        return owners[-1] if owners else None


class _Thread:
    def __init__(self) -> None:
        self.attached: list[TraceObserver] = []
        self.scopes: list[_Scope] = []
        self.task: int | None = None  # the last task entered before any run started


class _TaskRouting:
    """Routes the scheduler's task events to the traced run that owns the task: the
    task a run starts in and every task spawned from its tasks.

    doeff's scheduler trace sink is one per process; a sink installed before ours is
    still called.
    """

    def __init__(self) -> None:
        self._threads: dict[int, _Thread] = {}
        self._previous: Callable[[dict[str, object]], None] | None = None
        self._installed = False
        self._lock = threading.Lock()

    def attach(self, observer: TraceObserver) -> None:
        """Before the run: from now on this thread's task events are followed."""
        with self._lock:
            thread = self._threads.setdefault(threading.get_ident(), _Thread())
            thread.attached.append(observer)
            if not self._installed:
                from doeff_core_effects import scheduler

                self._previous = scheduler.scheduler_trace_sink()
                scheduler.set_scheduler_trace(self._sink)
                self._installed = True

    def detach(self, observer: TraceObserver) -> None:
        with self._lock:
            for ident, thread in list(self._threads.items()):
                if observer in thread.attached:
                    thread.attached.remove(observer)
                    if not thread.attached:
                        del self._threads[ident]
            if not self._threads and self._installed:
                from doeff_core_effects import scheduler

                scheduler.set_scheduler_trace(self._previous)
                self._installed = False

    def claim(self, observer: TraceObserver, entry: object) -> None:
        """The run starts, in the VM run from ``entry``: it owns the task running now."""
        thread = self._threads.get(threading.get_ident())
        if thread is None:
            return
        if not thread.scopes or thread.scopes[-1].entry is not entry:
            # The first run here starts in the task entered last; a VM run inside a
            # traced body starts in its own root task (None).
            scope = _Scope(entry)
            if not thread.scopes:
                scope.task = thread.task
            thread.scopes.append(scope)
        scope = thread.scopes[-1]
        scope.runs += 1
        scope.owners.setdefault(scope.task, []).append(observer)
        self._enter(scope, scope.task)

    def release(self, observer: TraceObserver) -> None:
        """The run ended: its tasks are nobody's; a VM with no traced run left is gone."""
        thread = self._threads.get(threading.get_ident())
        if thread is None or not thread.scopes:
            return
        scope = thread.scopes[-1]
        for owners in scope.owners.values():
            while observer in owners:
                owners.remove(observer)
        scope.runs -= 1
        if scope.runs <= 0:
            thread.scopes.pop()
        if thread.scopes:
            outer = thread.scopes[-1]
            self._enter(outer, outer.task)
        elif monitoring_available():
            dispatcher().set_current(None)

    def _enter(self, scope: _Scope, task: int | None) -> None:
        owner = scope.owner(task)
        if owner is not None:
            owner.enter_task(task)
        if monitoring_available():
            dispatcher().set_current(owner._context if owner is not None else None)

    def _sink(self, event: dict[str, object]) -> None:
        try:
            self._route(event)
        finally:
            previous = self._previous
            if previous is not None:
                previous(event)

    def _route(self, event: dict[str, object]) -> None:
        thread = self._threads.get(threading.get_ident())
        if thread is None:
            return
        kind = event.get("event")
        tid = event.get("tid")
        task = tid if type(tid) is int else None
        if not thread.scopes:
            if kind == "task-enter":
                thread.task = task
            return
        scope = thread.scopes[-1]  # the innermost VM is the one running
        if kind == "task-enter":
            scope.task = task
            self._enter(scope, task)
        elif kind == "spawned" and type(tid) is int:
            parent = event.get("parent")
            parent_task = parent if type(parent) is int else None
            owner = scope.owner(parent_task)
            if owner is not None:
                scope.owners.setdefault(task, []).append(owner)
                if owner._context is not None:
                    owner._context.new_tasks.add(task)
                # In the buffer, in order among the effects: timelines link a task to the
                # call that spawned it.
                owner._buffer.append(TaskEvent(tid, parent_task))
        elif kind == "task-leave" and event.get("effect") == "TaskCompleted":
            owner = scope.owner(task)
            if owner is not None and type(tid) is int:
                owner._buffer.append(TaskEvent(tid, finished_at=time.time()))
            scope.owners.pop(task, None)


_task_routing = _TaskRouting()


@contextmanager
def trace_observer(
    workflow_id: str,
    trace_dir: str | os.PathLike[str] | Path | None = None,
    *,
    max_trace_bytes: int | None = None,
    keep_rotated: int | None = None,
    capture_args: bool | None = None,
) -> Iterator[Callable[[Program], Program]]:
    """Yield ``observe(program) -> program``; the terminal record is written on exit.

    >>> with trace_observer("wf-001", ".doeff-flow") as observe:
    ...     value = doeff.run(my_handlers(observe(my_workflow())))
    """
    tracer = TraceObserver(
        workflow_id,
        trace_dir,
        max_trace_bytes=max_trace_bytes,
        keep_rotated=keep_rotated,
        capture_args=capture_args,
    )
    try:
        yield tracer.observe
    except BaseException as exc:
        tracer.close(exc)
        raise
    tracer.close()
