"""A connection's bounded send queue.

Live notifications are ``push``\\ ed only while they ``fit``: fewer than LIVE_MESSAGES
messages and LIVE_BYTES queued. What does not fit is not queued at all: the
subscription reads it from the trace file later, at the client's pace (see
subscriptions.py). Responses and those catch-up records are ``put`` after
``wait_space``, which waits until the queue is below a low-water mark. So a client never
holds more than about LIVE_BYTES of the daemon's memory.

A client that stops reading is cut off: when something waits for room in its queue and
nothing has been sent to it for ``stall`` seconds, the queue is dropped, ``overflowed``
is set and ``on_overflow`` is called (the connection closes, even mid-send).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.lowlevel

LIVE_MESSAGES: Final = 1000
LIVE_BYTES: Final = 8 * 1024 * 1024
LOW_MESSAGES: Final = 100
LOW_BYTES: Final = 1024 * 1024
BATCH_BYTES: Final = 64 * 1024  # joined into one send
STALL_SECONDS: Final = 10.0


class Outbox:
    def __init__(
        self,
        live_messages: int = LIVE_MESSAGES,
        live_bytes: int = LIVE_BYTES,
        low_messages: int = LOW_MESSAGES,
        low_bytes: int = LOW_BYTES,
        stall: float = STALL_SECONDS,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.live_messages = live_messages
        self.live_bytes = live_bytes
        self._low_messages = low_messages
        self._low_bytes = low_bytes
        self.stall = stall
        self._on_overflow = on_overflow  # e.g. close the connection, even mid-send
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._taken = 0  # batches handed to the socket: progress
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

    def fits(self, messages: int, size: int) -> bool:
        """Whether live notifications of ``size`` bytes in all fit in the queue now."""
        return (
            len(self._queue) + messages <= self.live_messages
            and self._bytes + size <= self.live_bytes
        )

    def put(self, message: bytes) -> None:
        if self.done:
            return
        self._queue.append(message)
        self._bytes += len(message)
        if self._taker_waiting:
            self._taker_waiting = False
            self._data = _fire(self._data)

    push = put  # a live notification (after ``fits``)

    def _above_low(self) -> bool:
        return len(self._queue) > self._low_messages or self._bytes > self._low_bytes

    async def wait_space(self) -> bool:
        """Wait until the queue is below its low-water mark; False (and the client cut
        off) if nothing was sent to it for ``stall`` seconds meanwhile, or it is done."""
        await anyio.lowlevel.checkpoint()
        while self._above_low() and not self.done:
            taken = self._taken
            self._space_waiters += 1
            try:
                with anyio.move_on_after(self.stall) as scope:
                    await self._space.wait()
            finally:
                self._space_waiters -= 1
            if scope.cancelled_caught and self._taken == taken and self._above_low():
                self.cut_off()
        return not self.done

    def cut_off(self) -> None:
        if self.done:
            return
        self.overflowed = True
        self._queue.clear()
        self._bytes = 0
        self._wake_all()
        if self._on_overflow is not None:
            self._on_overflow()

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
        self._taken += 1
        if self._space_waiters and not self._above_low():
            self._space = _fire(self._space)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _fire(event: anyio.Event) -> anyio.Event:
    """Wake everyone waiting on ``event``; later waiters wait on the fresh one returned."""
    event.set()
    return anyio.Event()
