"""The flusher: the thread that writes a tracer's pending records every FLUSH_INTERVAL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

FLUSH_INTERVAL: Final = (
    0.02  # seconds; a record is readable within this (plus one batch) of its effect
)


class Flusher:
    """Calls ``flush`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, flush: Callable[[], None], interval: float = FLUSH_INTERVAL) -> None:
        self._flush = flush
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="doeff-flow-flusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._flush()

    def wake(self) -> None:
        """Flush now rather than at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
