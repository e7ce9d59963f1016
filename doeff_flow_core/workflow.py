"""``run_workflow``: run a doeff program with what a workflow needs, traced live."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from doeff_flow_core.errors import WorkflowFailed
from doeff_flow_core.tracing import TraceObserver

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
) -> WorkflowResult[Any]:
    """Run ``program`` traced to ``<trace_dir>/<workflow_id>/trace.jsonl``.

    Installed, outermost first: the scheduler (Spawn, Gather, ...), Await, a reader over
    ``env``, state over ``store``, slog capture, a memo and cache handler over
    ``storage`` (a ``DurableStorage``, e.g. ``SQLiteStorage``) when given, then
    ``handlers`` (first outermost), then the tracer. Effects performed by ``handlers``
    are recorded; the internal traffic of the handlers installed here (the memo
    handler's storage calls, say) is not.

    An exception from the workflow is returned as ``result.error``, never raised;
    ``KeyboardInterrupt`` and ``SystemExit`` are recorded and re-raised. Invalid ids,
    unwritable trace directories and a workflow id another process is tracing now raise
    before the workflow starts. ``max_trace_bytes`` / ``keep_rotated``: see
    ``TraceObserver``.
    """
    import doeff
    from doeff_core_effects import await_handler, reader, slog_discard_handler, state
    from doeff_core_effects.scheduler import scheduled

    runtime: list[Any] = [
        await_handler(),
        reader(dict(env or {})),
        state(dict(store or {})),
        slog_discard_handler,
    ]
    if storage is not None:
        from doeff_core_effects.cache_handlers import cache_handler
        from doeff_core_effects.memo_handlers import memo_handler

        runtime += [memo_handler(storage), cache_handler(storage)]

    tracer = TraceObserver(
        workflow_id, trace_dir, max_trace_bytes=max_trace_bytes, keep_rotated=keep_rotated
    )
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
