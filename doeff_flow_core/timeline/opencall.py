"""A call whose span is still open: mutable while its run's records arrive (``openrun``)."""

from __future__ import annotations

from doeff_flow_core.records import TraceFrame
from doeff_flow_core.timeline.span import SpanEvent


class OpenCall:
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


def common_calls(
    stack: list[OpenCall], previous: tuple[TraceFrame, ...], frames: tuple[TraceFrame, ...]
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
