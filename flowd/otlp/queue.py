"""The spans waiting to be exported: a bounded queue that drops its oldest when full.

Pure. Spans come in faster than a collector may take them (or while it is down); the
queue never holds more than ``limit`` of them, nor more than ``weight_limit`` of weight,
so flowd's memory stays bounded however big the spans; it says how many it had to drop.
A span weighs 1 plus its events: events, with their slog fields, are most of a span's
size (one of 128 events with long fields is tens of KB; one without events, under 1 KB).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from doeff_flow_core.timeline.spans import Span

QUEUE_LIMIT: Final = 20_000  # spans
WEIGHT_LIMIT: Final = 200_000  # spans plus their events


def weight(span: Span) -> int:
    return 1 + len(span.events)


class SpanQueue:
    def __init__(self, limit: int = QUEUE_LIMIT, weight_limit: int = WEIGHT_LIMIT) -> None:
        self.limit = limit
        self.weight_limit = weight_limit
        self._spans: deque[Span] = deque()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def bound(self) -> str:
        """The limits, as the log says them."""
        return f"{self.limit} spans, or {self.weight_limit} spans and events"

    def put(self, spans: Sequence[Span]) -> int:
        """Queue ``spans``; returns how many spans (the oldest first) this dropped."""
        queue = self._spans
        queue.extend(spans)
        self._weight += sum(map(weight, spans))
        dropped = 0
        while len(queue) > self.limit or self._weight > self.weight_limit:
            self._weight -= weight(queue.popleft())
            dropped += 1
        return dropped

    @property
    def total_weight(self) -> int:
        """Of the queued spans: spans plus their events."""
        return self._weight

    def take(self, most: int, weight_most: int | None = None, least: int = 0) -> list[Span]:
        """Up to ``most`` spans, the oldest first; past the first ``least`` of them, no
        more than ``weight_most`` of weight in all."""
        spans = self._spans
        taken = [spans.popleft() for _ in range(min(most, least, len(spans)))]
        total = sum(map(weight, taken))
        more = min(most, len(spans) + len(taken)) - len(taken)
        while more > 0 and (weight_most is None or total + weight(spans[0]) <= weight_most):
            span = spans.popleft()
            total += weight(span)
            taken.append(span)
            more -= 1
        self._weight -= total
        return taken
