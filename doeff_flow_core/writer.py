"""The trace file: append-only, one ``write`` per flush, flushed from a background thread.

The writer never raises into the workflow once it has started: a failed write stops
tracing, says so once on stderr, and the workflow runs on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from doeff_flow_core.errors import TraceDirUnwritable

FLUSH_INTERVAL = 0.02  # seconds; a record is readable within this (plus one batch) of its effect


class TraceFile:
    """An open ``trace.jsonl`` in append mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TraceDirUnwritable(path.parent, exc) from None
        self.failed: str | None = None

    def write(self, text: str) -> None:
        """Append ``text``; on failure remember why and drop everything after."""
        if self.failed is not None or not text:
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            print(
                f"doeff-flow: tracing to {self.path} stopped: {self.failed}; "
                "the workflow continues untraced",
                file=sys.stderr,
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


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
