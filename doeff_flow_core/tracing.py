"""The doeff observer: one ``running`` record per effect, a terminal record at the end.

Two doeff 0.8 hooks work together. ``WithObserve`` sees every effect performed in its
scope, including those the workflow's own inner handlers answer, but gets no stack; a
pass-through handler installed innermost sees the effects that reach it and asks for
their stack with ``GetTraceback``. The observer parks each effect in a one-slot
``pending``; when the handler sees the same effect object it claims it with its stack.
An effect nobody claims is recorded with the last exact stack of its task, marked
``trace_exact: false``.

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
from contextlib import contextmanager, suppress
from itertools import chain
from pathlib import Path
from typing import Any

from doeff_flow_core.clock import IsoClock
from doeff_flow_core.encode import (
    Frame,
    Pending,
    RecordEncoder,
    describe_error,
    describe_result,
)
from doeff_flow_core.ids import validate_workflow_id
from doeff_flow_core.layout import TRACE_FILE_NAME, resolve_trace_dir
from doeff_flow_core.liveness import process_start_ticks, this_host
from doeff_flow_core.records import COMPLETED, FAILED
from doeff_flow_core.registry import register_trace_dir
from doeff_flow_core.writer import FLUSH_INTERVAL, Flusher, TraceFile

# Records are encoded in batches; the hot path encodes itself only past this many.
MAX_BUFFERED = 4096
# The flusher leaves the pending effect to the handler for this long before writing it
# without a stack (an inner handler answered it, or it is still on its way).
CLAIM_GRACE = 0.005

_INTERNAL_PATHS = ("/doeff/", "/doeff_vm/", "/doeff_core_effects/", "/doeff_flow_core/")
Program = Any


class TraceObserver:
    """Traces one run of one workflow to ``<trace_dir>/<workflow_id>/trace.jsonl``.

    Creating it opens the file (raising ``TraceDirUnwritable`` or ``InvalidWorkflowId``
    before anything runs); ``observe(program)`` wraps a program; ``close()`` writes the
    terminal record.
    """

    def __init__(
        self,
        workflow_id: str,
        trace_dir: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.workflow_id = validate_workflow_id(workflow_id)
        self.trace_dir = resolve_trace_dir(trace_dir).absolute()
        self.path = self.trace_dir / self.workflow_id / TRACE_FILE_NAME
        self._file = TraceFile(self.path)
        register_trace_dir(self.trace_dir)
        from doeff_core_effects import SlogEffect

        self.run_id = uuid.uuid4().hex[:12]
        self._encoder = RecordEncoder(
            workflow_id=self.workflow_id,
            run=self.run_id,
            started_at=IsoClock().format(time.time()),
            pid=os.getpid(),
            host=this_host(),
            pid_start=process_start_ticks(os.getpid()),
            slog_type=SlogEffect,
        )
        self.task: int | None = None  # the scheduler task running now (None: the root)
        self._pending: list[Pending] = []  # at most one effect, waiting for its stack
        self._ready: list[tuple[Pending, tuple[Any, ...] | None]] = []
        self._step = 0
        self._lock = threading.Lock()
        self._outcome: tuple[str, str | None, str | None, list[Frame]] | None = None
        self._closed = False
        self._flusher = Flusher(self.flush, flush_interval)
        self._flusher.start()
        _task_routing.attach(self)

    # -- hot path -------------------------------------------------------------------

    def _observe_effect(self, effect: object) -> None:
        """WithObserve's callback. It must never raise: that would abort the run."""
        try:
            pending = self._pending
            if pending:
                try:
                    self._ready.append((pending.pop(), None))
                except IndexError:
                    pass  # the flusher took it meanwhile
            self._step += 1
            pending.append((self._step, time.time(), effect, self.task))
            if len(self._ready) >= MAX_BUFFERED:
                self.flush()
        except Exception:  # pragma: no cover - defensive: tracing must not hurt the run
            pass

    def _claim(self, effect: object, frames: list[list[Any]]) -> None:
        pending = self._pending
        if pending and pending[0][2] is effect:
            try:
                entry = pending.pop()
            except IndexError:
                return
            self._ready.append((entry, tuple(chain.from_iterable(frames))))

    # -- flushing -------------------------------------------------------------------

    def flush(self, *, final: bool = False) -> None:
        with self._lock:
            pending = self._pending
            if pending and (final or time.time() - pending[0][1] > CLAIM_GRACE):
                with suppress(IndexError):
                    self._ready.append((pending.pop(), None))
            ready = self._ready
            count = len(ready)
            if not count:
                return
            batch = ready[:count]
            del ready[:count]
            try:
                text = self._encoder.running(batch)
            except Exception as exc:  # pragma: no cover - defensive
                text = ""
                print(f"doeff-flow: could not encode records: {exc!r}", file=sys.stderr)
            self._file.write(text)

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

        traced = with_handlers(handlers, handler(_stack_handler(self._claim))(program))

        @do  # type: ignore[untyped-decorator]
        def traced_by_doeff_flow() -> Any:
            try:
                value = yield traced
            except BaseException as exc:
                self.record_failure(exc)
                raise
            self.record_success(value)
            return value

        return WithObserve(self._observe_effect, traced_by_doeff_flow())

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

    @property
    def tracing_failed(self) -> str | None:
        return self._file.failed


def _stack_handler(claim: Callable[[object, list[list[Any]]], None]) -> Any:
    """A pass-through handler giving each effect that reaches it, with its stack, to ``claim``."""
    from doeff import GetTraceback, Pass, do

    @do  # type: ignore[untyped-decorator]
    def doeff_flow_tracer(effect: Any, k: Any) -> Any:
        frames = yield GetTraceback(k)
        claim(effect, frames)
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


class _TaskRouting:
    """Routes the scheduler's task-enter events to the observer running on that thread.

    doeff's scheduler trace sink is one per process; a sink installed before ours is
    still called.
    """

    def __init__(self) -> None:
        self._by_thread: dict[int, list[TraceObserver]] = {}
        self._previous: Callable[[dict[str, object]], None] | None = None
        self._installed = False
        self._lock = threading.Lock()

    def attach(self, observer: TraceObserver) -> None:
        with self._lock:
            self._by_thread.setdefault(threading.get_ident(), []).append(observer)
            if not self._installed:
                from doeff_core_effects import scheduler

                self._previous = scheduler.scheduler_trace_sink()
                scheduler.set_scheduler_trace(self._sink)
                self._installed = True

    def detach(self, observer: TraceObserver) -> None:
        with self._lock:
            stack = self._by_thread.get(threading.get_ident(), [])
            if observer in stack:
                stack.remove(observer)
            if not stack:
                self._by_thread.pop(threading.get_ident(), None)
            if not self._by_thread and self._installed:
                from doeff_core_effects import scheduler

                scheduler.set_scheduler_trace(self._previous)
                self._installed = False

    def _sink(self, event: dict[str, object]) -> None:
        if event.get("event") == "task-enter":
            stack = self._by_thread.get(threading.get_ident())
            if stack:
                tid = event.get("tid")
                stack[-1].task = tid if isinstance(tid, int) else None
        previous = self._previous
        if previous is not None:
            previous(event)


_task_routing = _TaskRouting()


@contextmanager
def trace_observer(
    workflow_id: str, trace_dir: str | os.PathLike[str] | Path | None = None
) -> Iterator[Callable[[Program], Program]]:
    """Yield ``observe(program) -> program``; the terminal record is written on exit.

    >>> with trace_observer("wf-001", ".doeff-flow") as observe:
    ...     value = doeff.run(my_handlers(observe(my_workflow())))
    """
    tracer = TraceObserver(workflow_id, trace_dir)
    try:
        yield tracer.observe
    except BaseException as exc:
        tracer.close(exc)
        raise
    tracer.close()
