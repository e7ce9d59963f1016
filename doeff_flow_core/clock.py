"""Timestamps: ISO-8601 with a UTC offset on write; the seed's naive form accepted on read."""

from __future__ import annotations

from datetime import UTC, datetime


class IsoClock:
    """Formats epoch seconds as ISO-8601 UTC to the millisecond, cheaply when called often.

    The date-and-seconds part changes once a second, so it is formatted once and kept.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._prefix}{int((ts - second) * 1000):03d}+00:00"


def parse_timestamp(text: str) -> datetime:
    """An aware datetime; a naive one (the seed's form) is read as local time."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed
