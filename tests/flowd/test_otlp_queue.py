"""The queue of spans waiting to be exported, without a daemon: bounded by spans and by
their events."""

from __future__ import annotations

from doeff_flow_core.timeline.spans import CALL, EFFECT, OK, Span, SpanEvent
from flowd.otlp.queue import SpanQueue


def call_span(span_id: int, events: int) -> Span:
    event = SpanEvent("slog('x')", 0.0, EFFECT)
    return Span("wf", "r", span_id, None, CALL, "f", None, None, None, 0.0, 1.0, OK, 1, 2,
                events=(event,) * events)  # fmt: skip


def test_the_queue_is_bounded_by_spans_and_by_their_events() -> None:
    queue = SpanQueue(limit=10, weight_limit=100)
    assert queue.put([call_span(i, 0) for i in range(12)]) == 2  # 12 spans: 2 too many
    assert [span.span_id for span in queue.take(100)] == list(range(2, 12))
    assert queue.put([call_span(i, 39) for i in range(3)]) == 1  # 3 x 40: the oldest goes
    assert queue.put([call_span(3, 9)]) == 0  # 2 x 40 + 10 = 90
    assert queue.put([call_span(4, 10)]) == 1  # 90 + 11: the oldest (40) goes
    assert [span.span_id for span in queue.take(100)] == [2, 3, 4]
    assert queue.put([call_span(5, 99)]) == 0  # taken: their weight is gone
    assert queue.put([call_span(6, 200)]) == 2  # heavier than the bound: not kept either
    assert len(queue) == 0
    assert queue.bound == "10 spans, or 100 spans and events"
