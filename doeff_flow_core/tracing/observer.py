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

import json
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from doeff_flow_core.clock import IsoClock
from doeff_flow_core.encode import (
    Entry,
    Frame,
    RecordEncoder,
    StackCache,
    describe_error,
    describe_result,
)
from doeff_flow_core.ids import validate_workflow_id
from doeff_flow_core.liveness import process_start_ticks, this_host
from doeff_flow_core.records import COMPLETED, FAILED
from doeff_flow_core.registry import register_trace_dir
from doeff_flow_core.tracefiles.layout import resolve_trace_dir, trace_file
from doeff_flow_core.tracefiles.writing import Rotation, TraceWriter
from doeff_flow_core.tracing.flusher import FLUSH_INTERVAL, Flusher
from doeff_flow_core.tracing.hooks import _stack_handler
from doeff_flow_core.tracing.monitor import dispatcher, internal_dirs, monitoring_available
from doeff_flow_core.tracing.routing import _task_routing
from doeff_flow_core.tracing.shadow import Context
from doeff_flow_core.tracing.stacktext import StackText
from doeff_flow_core.tracing.terminate import recorded, sigterm_recorded

# How far back the handler looks for its effect when others were observed after it.
CLAIM_WINDOW = 16
# How long a run being terminated waits for a lock the flusher holds (seconds).
LOCK_WAIT = 0.5
# How many of the last records a terminated run looks back through for a stack.
STACK_LOOKBACK = 64

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
    ``trace_mode`` (default ``$DOEFF_FLOW_TRACE_MODE`` or 0600) is the files' mode:
    ``0o640`` shares a team's traces with its group; directories follow (0750).
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
        trace_mode: int | None = None,
    ) -> None:
        self.workflow_id = validate_workflow_id(workflow_id)
        rotation = Rotation.from_environment(max_trace_bytes, keep_rotated)
        self.trace_dir = resolve_trace_dir(trace_dir).absolute()
        self.path = trace_file(self.trace_dir, self.workflow_id)
        self._file = TraceWriter(self.trace_dir, self.workflow_id, rotation, trace_mode)
        try:
            self._prepare(capture_args, flush_interval)
        except BaseException:
            self._file.abandon()  # nothing written yet: leave nothing half-made
            raise
        register_trace_dir(self.trace_dir)
        _task_routing.attach(self)

    def _prepare(self, capture_args: bool | None, flush_interval: float) -> None:
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
        self._ended = False  # the terminal record is written (guarded by the write lock)
        # A SIGTERM that came inside this tracer's own encoding or writing on the thread
        # that was running it (the error, the interrupted frame, that thread's id).
        self._pending: tuple[str, FrameType | None, int] | None = None
        if self.exact:
            self._context = Context(
                self._buffer, self._hand_over, SlogEffect, _args_wanted(capture_args)
            )
        self._last_written = ""  # the last batch written: its last line is where the run is
        self._flusher = Flusher(self.flush, flush_interval)
        self._flusher.start()

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
                    break
        if self._pending is not None:
            self._carry_out()

    # -- flushing -------------------------------------------------------------------

    def encode_buffered(self, *, final: bool = False) -> None:
        """Move buffered effects into the outbox as encoded lines."""
        with self._lock:
            self._encode(final)
        if self._pending is not None:
            self._carry_out()

    def _encode(self, final: bool) -> None:
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
            if not self._ended:
                self._write_outbox()
        if self._pending is not None:
            self._carry_out()

    def _write_outbox(self) -> None:
        """Write the encoded batches (the write lock held)."""
        outbox = self._outbox
        count = len(outbox)
        batches = outbox[:count]
        del outbox[:count]
        for text in batches:
            if self._ended:  # terminated meanwhile, without this lock
                return
            # The write releases the GIL: the workflow runs on meanwhile.
            self._file.write(text)
            self._last_written = text

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
            self._end(self._terminal(*self._outcome))
        self._file.close()

    def _terminal(
        self, status: str, result: str | None, error: str | None, frames: list[Frame]
    ) -> str:
        with self._lock:
            line = self._encoder.terminal(
                status, time.time(), result=result, error=error, frames=frames
            )
        if self._pending is not None:
            self._carry_out()
        return line

    def _end(self, line: str) -> None:
        with self._write_lock:
            if not self._ended:
                self._ended = True
                self._file.write(line)
        if self._pending is not None:
            self._carry_out()

    def terminate(self, error: str, frame: FrameType | None = None) -> bool:
        """Record that the process is being ended (from a signal handler on the main
        thread, ``frame`` the one it interrupted): what is buffered, then a ``failed``
        record with ``error`` and the stack of the latest record (its innermost line
        where ``frame`` shows it). True when done. False when the signal came inside
        this tracer's own encoding or writing: a batch may then be between the buffer
        and the file, so it is done as soon as that code ends (``_carry_out``), which
        then lets the process end (``terminate.recorded``)."""
        if self._ended:
            return True
        if _methods_running(frame, self) & _CRITICAL:
            self._pending = (error, frame, threading.get_ident())
            return False
        self._terminate_now(error, frame)
        return True

    def _carry_out(self) -> None:
        """A SIGTERM that came inside this tracer's encoding or writing, recorded now that
        that code is over, on the thread it interrupted; then the process ends."""
        pending = self._pending
        if pending is None or pending[2] != threading.get_ident():
            return
        self._pending = None
        try:
            self._terminate_now(pending[0], pending[1])
        finally:
            recorded(self)

    def _terminate_now(self, error: str, frame: FrameType | None) -> None:
        # Neither lock is held by the code this thread was running; the flusher may hold
        # one for a moment. The flusher is left alone (setting its events takes their
        # locks); its flushes find the trace ended and write nothing.
        self._closed = True
        encoding = _take(self._lock)
        writing = _take(self._write_lock)
        try:
            if self._ended:
                return
            if encoding:
                self._encode(final=True)
            self._write_outbox()
            frames = _latest_stack(self._last_written, frame)
            line = self._encoder.terminal(FAILED, time.time(), error=error, frames=frames)
            self._ended = True
            self._file.write(line)
            self._file.close()
        finally:
            if writing:
                self._write_lock.release()
            if encoding:
                self._lock.release()


# The methods that hold the encoding lock or the write lock (or are about to).
_CRITICAL = frozenset(
    {"encode_buffered", "_encode", "_claim_earlier", "_terminal", "flush", "_write_outbox", "_end"}
)


def _take(lock: threading.Lock) -> bool:
    return lock.acquire(timeout=LOCK_WAIT)


def _methods_running(frame: FrameType | None, tracer: TraceObserver) -> set[str]:
    """The names of ``tracer``'s methods on the stack that ends in ``frame``."""
    names: set[str] = set()
    while frame is not None:
        if frame.f_code.co_filename == __file__ and frame.f_locals.get("self") is tracer:
            names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def _latest_stack(batch: str, frame: FrameType | None) -> list[Frame]:
    """The stack of the latest record in ``batch`` that has one (an effect no handler had
    claimed yet is written with none), outermost first; its innermost frame's line is
    ``frame``'s (or a caller's of it) when that frame runs the same function."""
    frames: list[Frame] = []
    end = len(batch) - 1
    for _ in range(STACK_LOOKBACK):
        start = batch.rfind("\n", 0, end) + 1
        frames = _frames_of(batch[start:end])
        if frames or start == 0:
            break
        end = start - 1
    if frames:
        function, file, _ = frames[-1]
        while frame is not None:
            code = frame.f_code
            if code.co_filename == file and function in (code.co_qualname, code.co_name):
                # Not a body's first instruction: its line is the decorator's.
                if frame.f_lineno > code.co_firstlineno:
                    frames[-1] = (function, file, frame.f_lineno)
                break
            frame = frame.f_back
    return frames


def _frames_of(line: str) -> list[Frame]:
    try:
        record = json.loads(line)
    except ValueError:
        return []
    trace = record.get("trace") if isinstance(record, dict) else None
    return [
        (str(f.get("function")), str(f.get("file")), int(f.get("line") or 0))
        for f in (trace if isinstance(trace, list) else [])
        if isinstance(f, dict)
    ]


def raise_site(error: BaseException) -> list[Frame]:
    """The workflow's frames from the outermost call to the raise, outermost first."""
    frames: list[Frame] = []
    internal = internal_dirs()
    for summary in traceback.extract_tb(error.__traceback__):
        if summary.name == "traced_by_doeff_flow" or summary.filename.startswith(internal):
            continue
        frames.append((summary.name, summary.filename, summary.lineno or 0))
    return frames


@contextmanager
def trace_observer(
    workflow_id: str,
    trace_dir: str | os.PathLike[str] | Path | None = None,
    *,
    max_trace_bytes: int | None = None,
    keep_rotated: int | None = None,
    capture_args: bool | None = None,
    trace_mode: int | None = None,
) -> Iterator[Callable[[Program], Program]]:
    """Yield ``observe(program) -> program``; the terminal record is written on exit.

    >>> with trace_observer("wf-001", ".doeff-flow") as observe:
    ...     value = doeff.run(my_handlers(observe(my_workflow())))

    Within the block, in the main thread, SIGTERM at its default disposition is recorded
    as ``failed`` before it ends the process, as under ``run_workflow``.
    """
    tracer = TraceObserver(
        workflow_id,
        trace_dir,
        max_trace_bytes=max_trace_bytes,
        keep_rotated=keep_rotated,
        capture_args=capture_args,
        trace_mode=trace_mode,
    )
    with sigterm_recorded(tracer):  # until the terminal record is written
        try:
            yield tracer.observe
        except BaseException as exc:
            tracer.close(exc)
            raise
        tracer.close()
