"""The spans waiting to be exported: a bounded queue that drops its oldest when full.

Pure. Spans come in faster than a collector may take them (or while it is down); the
queue never holds more than ``limit`` of them, so flowd's memory stays bounded, and
says how many it had to drop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from doeff_flow_core.spans import Span

QUEUE_LIMIT: Final = 20_000


class SpanQueue:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self._spans: deque[Span] = deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._spans)

    def put(self, spans: Sequence[Span]) -> int:
        """Queue ``spans``; returns how many (older) spans this dropped."""
        dropped = max(0, len(self._spans) + len(spans) - self.limit)
        self._spans.extend(spans)  # the deque's maxlen drops from the other end
        return dropped

    def take(self, most: int) -> list[Span]:
        """Up to ``most`` spans, the oldest first."""
        spans = self._spans
        return [spans.popleft() for _ in range(min(most, len(spans)))]
