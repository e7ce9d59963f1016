"""A connection's bounded send queue.

Notifications are ``push``\\ ed without waiting: a client that stops reading is cut off
once MAX_MESSAGES messages (or MAX_BYTES) wait for it, and what was queued is dropped,
so it never grows the daemon's memory without bound. Responses and catch-up records
(a snapshot, a replay) are ``put`` after ``wait_space``, which waits until the queue is
below a low-water mark: they slow down with the client instead of cutting it off, and
leave room for the live notifications.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import anyio
import anyio.lowlevel

MAX_MESSAGES: Final = 1000
MAX_BYTES: Final = 8 * 1024 * 1024
LOW_MESSAGES: Final = 100
LOW_BYTES: Final = 1024 * 1024
BATCH_BYTES: Final = 256 * 1024  # joined into one send


class Outbox:
    def __init__(
        self,
        max_messages: int = MAX_MESSAGES,
        max_bytes: int = MAX_BYTES,
        low_messages: int = LOW_MESSAGES,
        low_bytes: int = LOW_BYTES,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._low_messages = low_messages
        self._low_bytes = low_bytes
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._data = anyio.Event()
        self._space = anyio.Event()
        self._taker_waiting = False
        self._space_waiters = 0
        self.overflowed = False
        self.closing = False  # no more messages; the queue is sent, then the end

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def done(self) -> bool:
        return self.overflowed or self.closing

    def push(self, message: bytes) -> None:
        """Queue a notification; past the limits the client is cut off instead."""
        if self.done:
            return
        if len(self._queue) >= self.max_messages or self._bytes + len(message) > self.max_bytes:
            self.overflowed = True
            self._queue.clear()
            self._bytes = 0
            self._wake_all()
            return
        self._append(message)

    def put(self, message: bytes) -> None:
        """Queue a message whatever the queue holds (call ``wait_space`` first)."""
        if not self.done:
            self._append(message)

    def _append(self, message: bytes) -> None:
        self._queue.append(message)
        self._bytes += len(message)
        if self._taker_waiting:
            self._taker_waiting = False
            self._data = _fire(self._data)

    def _above_low(self) -> bool:
        return len(self._queue) > self._low_messages or self._bytes > self._low_bytes

    async def wait_space(self) -> None:
        await anyio.lowlevel.checkpoint()
        while self._above_low() and not self.done:
            self._space_waiters += 1
            try:
                await self._space.wait()
            finally:
                self._space_waiters -= 1

    def close(self) -> None:
        """Send what is queued, then end."""
        self.closing = True
        self._wake_all()

    def _wake_all(self) -> None:
        self._data = _fire(self._data)
        self._space = _fire(self._space)

    async def take(self) -> bytes | None:
        """The next bytes to send (queued messages joined), or None at the end."""
        while not self._queue:
            if self.done:
                return None
            self._taker_waiting = True
            await self._data.wait()
        if self.overflowed:
            return None
        parts: list[bytes] = []
        size = 0
        while self._queue and size < BATCH_BYTES:
            message = self._queue.popleft()
            parts.append(message)
            size += len(message)
        self._bytes -= size
        if self._space_waiters and not self._above_low():
            self._space = _fire(self._space)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _fire(event: anyio.Event) -> anyio.Event:
    """Wake everyone waiting on ``event``; later waiters wait on the fresh one returned."""
    event.set()
    return anyio.Event()
