"""What a timeline is made of: ``Span`` (one ``@do`` call, or one run of a workflow) and
``SpanEvent`` (an effect, a slog line or the error inside one), with the words for their
kinds and statuses. Built by ``spans`` (``SpanBuilder``, ``spans_of``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from doeff_flow_core.records import LiveTrace, TraceFrame

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
    # A run with no terminal record: how it stands, when whoever ended it knew (``lost``:
    # its writer is gone). Set on the workflow span only.
    ending: str | None = None


def run_key(record: LiveTrace) -> str:
    """The run a record belongs to: its ``run``, or for a trace written without run ids
    (the original format) the run's start time, so that re-runs still differ."""
    return record.run or record.started_at.isoformat()


def exception_event(error: str, now: float, raise_site: tuple[TraceFrame, ...] = ()) -> SpanEvent:
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
