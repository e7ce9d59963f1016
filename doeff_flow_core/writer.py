"""The trace file: append-only, one ``write`` per flush, flushed from a background thread,
rotated by size; and the lock that keeps it to one writer.

The writer never raises into the workflow once it has started: a failed write stops
tracing, says so once on stderr, and the workflow runs on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from doeff_flow_core.errors import BadTraceSetting, TraceDirUnwritable, WorkflowBusy
from doeff_flow_core.layout import LOCK_FILE_NAME, rotated_path

FLUSH_INTERVAL = 0.02  # seconds; a record is readable within this (plus one batch) of its effect
MAX_BYTES_ENV = "DOEFF_FLOW_MAX_TRACE_BYTES"
KEEP_ENV = "DOEFF_FLOW_KEEP_ROTATED"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 3
TORN_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Rotation:
    """When ``trace.jsonl`` is rotated: past ``max_bytes``, into ``trace.jsonl.1`` ...
    ``.keep`` (the oldest beyond ``keep`` is dropped). ``max_bytes`` 0 never rotates."""

    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP

    @classmethod
    def from_environment(cls, max_bytes: int | None = None, keep: int | None = None) -> Rotation:
        """Arguments first, then ``$DOEFF_FLOW_MAX_TRACE_BYTES`` / ``$DOEFF_FLOW_KEEP_ROTATED``."""
        return cls(
            max_bytes=_setting(max_bytes, MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
            keep=_setting(keep, KEEP_ENV, DEFAULT_KEEP),
        )


def _setting(given: int | None, variable: str, default: int) -> int:
    if given is not None:
        value: object = given
    else:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadTraceSetting(variable, text) from None
    if not isinstance(value, int) or value < 0:
        raise BadTraceSetting(variable, value)
    return value


class WriterLock:
    """One writer per workflow: an advisory lock on ``<workflow dir>/writer.lock``.

    The kernel drops the lock when the process dies, so a crash never leaves the
    workflow locked. The file holds the holder's pid, for the error message.
    """

    def __init__(self, directory: Path, workflow_id: str) -> None:
        path = directory / LOCK_FILE_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TraceDirUnwritable(directory, exc) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self._fd)
            raise WorkflowBusy(workflow_id, holder) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the descriptor drops the lock


class TraceFile:
    """An open ``trace.jsonl`` in append mode, rotated by size."""

    def __init__(self, path: Path, rotation: Rotation | None = None) -> None:
        self.path = path
        self.rotation = rotation or Rotation()
        try:
            self._open()
            self._cut_torn_tail()
        except OSError as exc:
            raise TraceDirUnwritable(path.parent, exc) from None
        self.failed: str | None = None
        self._recovered = False

    def _open(self) -> None:
        # Read-write: a torn tail is found by reading it.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        status = os.fstat(self._fd)
        self._size = status.st_size
        self._identity = (status.st_dev, status.st_ino)

    def _cut_torn_tail(self) -> None:
        """Drop a partial last line left by a writer killed mid-write, so that this run's
        records do not follow it on the same line. Safe: we hold the writer lock, and
        readers never read past the last newline."""
        end = self._size
        if not end or os.pread(self._fd, 1, end - 1) == b"\n":
            return
        position = end
        while position > 0:
            start = max(0, position - TORN_BLOCK)
            cut = os.pread(self._fd, position - start, start).rfind(b"\n")
            if cut >= 0:
                position = start + cut + 1
                break
            position = start
        os.ftruncate(self._fd, position)
        self._size = position

    def _follow_path(self) -> None:
        """Write where the path leads: if the file was removed or replaced by someone
        else, go on in a new file at the path (and say so, once)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            reason = "was removed"
        else:
            if (status.st_dev, status.st_ino) == self._identity:
                return
            reason = "was replaced"
        os.close(self._fd)
        self._open()
        if not self._recovered:
            self._recovered = True
            print(
                f"doeff-flow: trace file {self.path} {reason}; tracing goes on in a new one",
                file=sys.stderr,
            )

    def write(self, text: str) -> None:
        """Append ``text``; on failure remember why and drop everything after."""
        if self.failed is not None or not text:
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        try:
            self._follow_path()
            limit = self.rotation.max_bytes
            if limit and self._size and self._size + len(data) > limit:
                self._rotate()
            self._size += len(data)
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

    def _rotate(self) -> None:
        """trace.jsonl -> .1 -> .2 ... between two writes, so no line is ever split."""
        os.close(self._fd)
        keep = self.rotation.keep
        if keep:
            for index in range(keep - 1, 0, -1):
                older = rotated_path(self.path, index)
                if older.exists():
                    os.replace(older, rotated_path(self.path, index + 1))
            os.replace(self.path, rotated_path(self.path, 1))
        else:
            os.unlink(self.path)
        self._open()

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
