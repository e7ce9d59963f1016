"""Change detection: inotify through ctypes, and a schedule of polls that back off.

With inotify, each root directory has a watch, and so has each workflow directory that
is running or changed lately (watches stay far below the per-user limit with 100,000
workflows): a workflow directory created or removed under a root, a run starting (the
writer touches its directory, which the root's watch reports), a trace created,
appended to, truncated, moved or deleted — each wakes flowd at once. An idle workflow
loses its watch; its root's check looks at a slice of its idle workflows each time, so
each is looked at now and then (every ~50 minutes at 100,000); every watched item is
also checked on a slow timer (SAFETY_INTERVAL), in case an event was lost.

Without inotify (unavailable, out of watches, or ``--watcher poll``), each trace is
polled with ``os.stat``: every POLL_FIRST seconds after it changed, then less and less
often while it stays the same, up to POLL_IDLE_MAX for a trace idle for minutes. The
schedule is a heap of due times; the daemon sleeps until the next one is due, so
nothing is polled more often than its interval and nothing spins.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import itertools
import os
import random
import struct
from dataclasses import dataclass
from typing import Final, Protocol

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

GONE: Final = IN_DELETE | IN_MOVED_FROM
CAME: Final = IN_CREATE | IN_MOVED_TO
# A root: workflow directories come and go (and are touched by a writer starting a run:
# IN_ATTRIB); the root itself may go.
ROOT_MASK: Final = CAME | GONE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
# A workflow directory: its trace is created, written, truncated, replaced or deleted.
ENTRY_MASK: Final = (
    CAME | GONE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_ONLYDIR | IN_DONT_FOLLOW
)

POLL_FIRST: Final = 0.05  # seconds after a change
POLL_ACTIVE_MAX: Final = 1.0  # doubling up to here
POLL_IDLE_MAX: Final = 10.0  # then slowly up to here
IDLE_GROWTH: Final = 1.1
SAFETY_INTERVAL: Final = 60.0  # items inotify watches
UNWATCH_AFTER: Final = 60.0  # a workflow unchanged this long, and not running, is idle
ROOT_POLL: Final = 0.5  # a root's mtime, when polling
ROOT_MISSING: Final = 1.0  # a root that does not exist (yet)

_EVENT: Final = struct.Struct("iIII")


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str


class InotifyUnavailable(OSError):
    def __init__(self, error: int) -> None:
        super().__init__(error, f"inotify unavailable: {os.strerror(error)}")


class Inotify:
    """An inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except (OSError, AttributeError):
            raise InotifyUnavailable(errno.ENOSYS) from None
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise InotifyUnavailable(ctypes.get_errno())
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        """The watch descriptor for ``path``, or OSError (ENOENT, ENOTDIR, ENOSPC, ...)."""
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it: nothing to do

    def read(self) -> list[Event]:
        """Every event waiting now (none when there is none)."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 256 * 1024)
            except BlockingIOError:
                return events
            if not data:
                return events
            events.extend(parse_events(data))

    def close(self) -> None:
        os.close(self.fd)


def parse_events(data: bytes) -> list[Event]:
    events: list[Event] = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset : offset + length].rstrip(b"\0")
        offset += length
        events.append(Event(wd, mask, cookie, os.fsdecode(name)))
    return events


class Scheduled(Protocol):
    """Something checked on a timer: it carries its own due time and interval."""

    due: float
    interval: float


class Schedule:
    """Items by due time. Rescheduling an item leaves its old heap slot stale."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Scheduled]] = []
        self._order = itertools.count()

    def add(self, item: Scheduled, now: float, delay: float) -> None:
        item.due = now + delay
        heapq.heappush(self._heap, (item.due, next(self._order), item))

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].due != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, most: int) -> list[Scheduled]:
        due: list[Scheduled] = []
        while self._heap and len(due) < most and self._heap[0][0] <= now:
            when, _, item = heapq.heappop(self._heap)
            if item.due == when:
                item.due = float("inf")
                due.append(item)
        return due

    def cancel(self, item: Scheduled) -> None:
        if item.due != float("inf"):
            item.due = float("inf")


def next_poll(interval: float, changed: bool) -> float:
    """The next poll interval of a trace: short after a change, growing while idle."""
    if changed or interval <= 0:
        return POLL_FIRST
    if interval < POLL_ACTIVE_MAX:
        return min(interval * 2, POLL_ACTIVE_MAX)
    return min(interval * IDLE_GROWTH, POLL_IDLE_MAX)


def jittered(interval: float) -> float:
    """``interval`` spread by ±25%, so items added together are not checked together."""
    return interval * random.uniform(0.75, 1.25)
