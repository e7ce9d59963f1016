"""``run_workflow``: run a doeff program with what a workflow needs, traced live."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from doeff_flow_core.errors import WorkflowFailed
from doeff_flow_core.tracing import TraceObserver
from doeff_flow_core.tracing.terminate import sigterm_recorded

T = TypeVar("T")


@dataclass(frozen=True)
class WorkflowResult(Generic[T]):
    """How a workflow ended: ``value`` when it completed, ``error`` when it raised."""

    workflow_id: str
    value: T | None
    error: BaseException | None
    trace_path: Path
    run_id: str

    def is_ok(self) -> bool:
        return self.error is None

    def is_err(self) -> bool:
        return self.error is not None

    def unwrap(self) -> T:
        """The value, or ``WorkflowFailed`` (with the original as ``__cause__``)."""
        if self.error is not None:
            raise WorkflowFailed(self.workflow_id, self.error) from self.error
        return self.value  # type: ignore[return-value]


def standard_handlers(
    env: Mapping[Any, Any] | None = None,
    store: Mapping[Any, Any] | None = None,
    storage: Any = None,
) -> list[Any]:
    """The handlers ``run_workflow`` installs inside the scheduler, outermost first
    (see ``run_workflow``): for running the same stack untraced, or elsewhere."""
    from doeff_core_effects import (
        await_handler,
        lazy_ask,
        listen_handler,
        slog_discard_handler,
        state,
        try_handler,
        writer,
    )

    # The order matters where one handler performs or observes another's effects:
    # writer keeps its log with Get/Put, so state is outside it; Listen observes only
    # what reaches the handlers outside listen_handler, so writer and the slog sink are
    # outside it; lazy_ask and await_handler use the scheduler's semaphores and promises.
    # lazy_ask answers Local itself: a local_handler inside it would answer Local first
    # and let a lazy value computed under the override stay cached after the scope ends.
    runtime: list[Any] = [
        lazy_ask(dict(env or {}), strict=True),
        state(dict(store or {})),
        writer,
        try_handler,
        slog_discard_handler,
        listen_handler,
        await_handler(),
    ]
    if storage is not None:
        from doeff_core_effects.cache_handlers import cache_handler
        from doeff_core_effects.memo_handlers import memo_handler

        runtime += [memo_handler(storage), cache_handler(storage)]
    return runtime


def run_workflow(
    program: Any,
    workflow_id: str,
    trace_dir: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[Any, Any] | None = None,
    store: Mapping[Any, Any] | None = None,
    storage: Any = None,
    handlers: Sequence[Any] = (),
    max_trace_bytes: int | None = None,
    keep_rotated: int | None = None,
    capture_args: bool | None = None,
    trace_mode: int | None = None,
) -> WorkflowResult[Any]:
    """Run ``program`` traced to ``<trace_dir>/<workflow_id>/trace.jsonl``.

    Every effect ``doeff run`` answers for a program with no interpreter is answered
    here too, so a program that runs under ``doeff run`` runs here. Installed, outermost
    first, in the order ``doeff run`` uses:

    1. the scheduler (Spawn, Wait, Gather, Race, Cancel, Discard, promises, semaphores);
    2. ``lazy_ask`` over ``env`` (Ask and Local; a value that is a program is run once,
       when first asked; a missing key raises ``MissingEnvKeyError`` at the Ask);
    3. ``state`` over ``store`` (Get, Put);
    4. ``writer`` (Tell; ``writer_log()`` reads what was told);
    5. ``try_handler`` (Try);
    6. ``slog_discard_handler`` (slog is recorded in the trace, not printed; ``doeff run``
       prints it to stderr);
    7. ``listen_handler`` (Listen);
    8. ``await_handler`` (Await);
    9. a memo and cache handler over ``storage`` (a ``DurableStorage``, e.g.
       ``SQLiteStorage``) when given;

    then ``handlers`` (first outermost), then the tracer. Effects performed by
    ``handlers`` are recorded; the internal traffic of the handlers installed here (the
    memo handler's storage calls, say) is not.

    An exception from the workflow is returned as ``result.error``, never raised;
    ``KeyboardInterrupt`` and ``SystemExit`` are recorded and re-raised. SIGTERM, when
    this runs in the main thread and SIGTERM has its default disposition, writes a
    ``failed`` record (``Terminated: SIGTERM``, the stack where the run was) and then ends
    the process as SIGTERM would have; a handler the application installed is left alone,
    and the disposition is put back when this returns (``tracing.terminate``). Invalid ids,
    unwritable trace directories and a workflow id another process is tracing now raise
    before the workflow starts. ``max_trace_bytes`` / ``keep_rotated`` /
    ``capture_args`` / ``trace_mode``: see ``TraceObserver``.
    """
    import doeff
    from doeff_core_effects.scheduler import scheduled

    runtime = standard_handlers(env, store, storage)
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
            traced = tracer.instrument(program, handlers)
            value = doeff.run(scheduled(doeff.with_handlers(runtime, traced)))
        except Exception as exc:
            tracer.close(exc)
            return WorkflowResult(workflow_id, None, exc, tracer.path, tracer.run_id)
        except BaseException as exc:
            tracer.close(exc)
            raise
        tracer.close()
    return WorkflowResult(workflow_id, value, None, tracer.path, tracer.run_id)
