"""``watch`` subscriptions: who gets which records, in which order.

A subscription is on one workflow (bound to its (root, id) once that exists, *pending*
until then) or on every workflow. Records reach it two ways:

- live: each ``Update`` the index reads is pushed to the subscribers' outboxes at once,
  when it fits there (``Outbox.fits``);
- from the file: a key in the subscription's *backlog* is caught up by its one pump
  task, a batch at a time, at the client's pace: the latest record (the first thing a
  watch sends), the records after ``after`` (a resumed watch), or the records that did
  not fit live (a burst, or a client that fell behind). Live updates for a key in the
  backlog are left to the pump, which reads up to the index's offset and then hands the
  key back to the live path in one synchronous step: nothing is sent twice, nothing is
  skipped, every workflow's records arrive in order.

A pump's place is a ``Position`` in the chain of files (the file's identity and an
offset), so a rotation while a client is behind is followed through the rotated parts
(``read_on``), and a resumed watch finds its step in them too (``resume_position``).

Memory: a connection holds at most ``protocol.MAX_WATCHES`` subscriptions (``watch``
refuses more before making anything). A subscription waiting for an id is small (no
backlog, no notification prefix until it needs them; one table entry per id), and
``stop`` leaves nothing behind: no reference to its connection, no empty table entry.
Once many have been stopped, ``Hub.run`` runs a full collection, which also empties the
interpreter's free lists: what a flood of watches took goes back to the system instead
of staying pinned in half-empty arenas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol

import anyio
import anyio.to_thread

from doeff_flow_core.tracefiles.cursor import Position
from flowd import memory
from flowd.index import Entry, Index, Key, Update, oldest, read_range, resume_position
from flowd.jsonrpc import trace_body, trace_prefix
from flowd.outbox import Outbox
from flowd.stored import StoredRecord, resume_from

log = logging.getLogger("flowd")

READ_BATCH_BYTES: Final = 256 * 1024  # read from a file per pump step
RETRY_DELAY: Final = 0.05
RETRIES: Final = 40
# Stopped subscriptions after which a full collection gives their memory back, and how
# long after the last stop it runs (the connections that held them are gone by then).
RELEASED_COLLECT: Final = 1000
COLLECT_DELAY: Final = 0.2

After = tuple[str | None, int]  # (run, step) the client saw last


class Subscriber(Protocol):
    """What a subscription needs from its connection."""

    @property
    def outbox(self) -> Outbox: ...

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


class Backlog:
    """Where the pump is in one workflow's records for one subscription."""

    __slots__ = ("after", "entry", "failures", "first", "gen", "position")

    def __init__(
        self, entry: Entry, position: Position | None = None, after: After | None = None
    ) -> None:
        self.entry = entry
        self.gen = entry.gen
        self.position = position  # None: nothing to read (no trace yet)
        self.after = after  # first find the offset after this (run, step)
        self.first: StoredRecord | None = None  # to send before reading on
        self.failures = 0

    @classmethod
    def at_latest(cls, entry: Entry) -> Backlog:
        """The latest record now, then every record after what the index has read now
        (records that arrive before the pump gets to it are read, not skipped)."""
        cursor = cls(entry, entry.position)
        cursor.first = entry.latest
        return cursor


class _Detached:
    """The subscriber of a stopped subscription: it holds no connection alive (a
    connection and its subscriptions would otherwise form a cycle, freed only by a
    full collection). Nothing is sent through it: a stopped subscription sends nothing."""

    @property
    def outbox(self) -> Outbox:
        raise RuntimeError("a stopped subscription has no connection")

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        raise RuntimeError("a stopped subscription has no connection")


DETACHED: Final = _Detached()
# Every subscription's backlog until it has one: shared, never written (``queue`` gives
# a subscription its own dict first).
NO_BACKLOG: Final[dict[Key, Backlog]] = {}


class Subscription:
    __slots__ = (
        "_prefix",
        "after",
        "backlog",
        "closed",
        "id",
        "key",
        "pumping",
        "root",
        "subscriber",
        "workflow_id",
    )

    def __init__(
        self,
        ident: str,
        subscriber: Subscriber,
        workflow_id: str | None,
        root: str | None,
        after: After | None = None,
    ) -> None:
        self.id = ident
        self.subscriber = subscriber
        self.workflow_id = workflow_id  # None: every workflow
        self.root = root  # None: any root
        self.after = after
        self.key: Key | None = None  # the workflow it is bound to
        self.backlog = NO_BACKLOG
        self.pumping = False
        self.closed = False
        self._prefix: bytes | None = None

    @property
    def prefix(self) -> bytes:
        """The start of its notifications (made when the first one is sent)."""
        if self._prefix is None:
            self._prefix = trace_prefix(self.id)
        return self._prefix

    def queue(self, key: Key, cursor: Backlog) -> None:
        """Leave ``key``'s records to the pump, from ``cursor``."""
        if self.backlog is NO_BACKLOG:
            self.backlog = {}
        self.backlog[key] = cursor

    def matches_root(self, entry: Entry) -> bool:
        return self.root is None or self.root == entry.root

    def send(self, bodies: Iterable[bytes]) -> None:
        outbox = self.subscriber.outbox
        for body in bodies:
            outbox.put(self.prefix + body)


def bodies_of(entry: Entry, lines: Iterable[StoredRecord]) -> list[bytes]:
    return [trace_body(entry.workflow_id, entry.root, line.raw) for line in lines]


Waiting = Subscription | set[Subscription]  # one subscription on an id, or several


class Hub:
    def __init__(self, index: Index) -> None:
        self._index = index
        self._bound: dict[Key, set[Subscription]] = {}
        self._pending: dict[str, Waiting] = {}  # by workflow id: a set only when shared
        self._everything: set[Subscription] = set()
        self.live = 0  # subscriptions started and not stopped
        self._released = 0  # stopped since the last collection
        self._collect: anyio.Event | None = None  # set: collect soon (``run``)

    @property
    def waiting(self) -> int:
        """Workflow ids that subscriptions wait for (none is indexed yet)."""
        return len(self._pending)

    async def run(self) -> None:
        """Give the memory of stopped subscriptions back, once many were stopped and
        no more have been for COLLECT_DELAY (their connections are gone by then)."""
        while True:
            self._collect = anyio.Event()
            await self._collect.wait()
            while await self._still_stopping():
                pass
            self._released = 0
            memory.release()

    async def _still_stopping(self) -> bool:
        """Whether more subscriptions were stopped in the next COLLECT_DELAY (a helper,
        so that no count stays behind in ``run``'s frame)."""
        released = self._released
        await anyio.sleep(COLLECT_DELAY)
        return self._released != released

    def start(self, sub: Subscription) -> None:
        """Begin sending: call right after the ``watch`` response is queued."""
        self.live += 1
        if sub.workflow_id is None:
            self._everything.add(sub)
            for entry in self._index.entries():
                if sub.matches_root(entry):
                    sub.queue(entry.key, Backlog.at_latest(entry))
            self._pump(sub)
            return
        found = self._index.resolve(sub.workflow_id, sub.root)
        if found is None:
            self._wait(sub.workflow_id, sub)
        else:
            self._bind(sub, found, None)

    def stop(self, sub: Subscription) -> None:
        if sub.closed:
            return
        self.live -= 1
        sub.closed = True
        sub.backlog = NO_BACKLOG
        sub.subscriber = DETACHED
        self._everything.discard(sub)
        if sub.key is not None:
            subs = self._bound.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._bound[sub.key]
        elif sub.workflow_id is not None:
            self._unwait(sub.workflow_id, sub)
        self._released += 1
        if self._released >= RELEASED_COLLECT and self._collect is not None:
            self._collect.set()

    def _wait(self, workflow_id: str, sub: Subscription) -> None:
        waiting = self._pending.get(workflow_id)
        if waiting is None:
            self._pending[workflow_id] = sub
        elif isinstance(waiting, set):
            waiting.add(sub)
        else:
            self._pending[workflow_id] = {waiting, sub}

    def _unwait(self, workflow_id: str, sub: Subscription) -> None:
        waiting = self._pending.get(workflow_id)
        if waiting is sub:
            del self._pending[workflow_id]
        elif isinstance(waiting, set):
            waiting.discard(sub)
            if not waiting:
                del self._pending[workflow_id]
        if not self._pending:
            self._pending.clear()  # frees the table: one that held many ids would stay

    def publish(self, update: Update) -> None:
        entry = update.entry
        if update.lines:
            bodies: list[bytes] | None = None
            for sub in (*self._bound.get(entry.key, ()), *self._everything):
                if entry.key in sub.backlog or not sub.matches_root(entry):
                    continue
                if not update.complete and not update.found:  # too big at once
                    self._defer(sub, entry, entry.start)
                    continue
                if bodies is None:
                    bodies = bodies_of(entry, update.lines)
                self._deliver(sub, entry, update.lines, bodies)
        waiting = self._pending.get(entry.workflow_id)
        if waiting is not None:
            subs = waiting if isinstance(waiting, set) else {waiting}
            for sub in [sub for sub in subs if sub.matches_root(entry)]:
                self._unwait(entry.workflow_id, sub)
                self._bind(sub, entry, update)

    def _deliver(
        self,
        sub: Subscription,
        entry: Entry,
        lines: list[StoredRecord],
        bodies: list[bytes] | None = None,
    ) -> None:
        """Push records live if they fit the client's queue, else read them later."""
        if not lines:
            return
        bodies = bodies_of(entry, lines) if bodies is None else bodies
        size = sum(map(len, bodies)) + len(sub.prefix) * len(bodies)
        if sub.subscriber.outbox.fits(len(bodies), size):
            sub.send(bodies)
        else:
            first = lines[0]
            self._defer(sub, entry, None if first.ident is None else (first.ident, first.start))

    def _defer(self, sub: Subscription, entry: Entry, position: Position | None) -> None:
        """Leave a workflow's records from ``position`` (None: its latest) to the pump."""
        sub.queue(
            entry.key,
            Backlog(entry, position) if position is not None else Backlog.at_latest(entry),
        )
        self._pump(sub)

    def _bind(self, sub: Subscription, entry: Entry, update: Update | None) -> None:
        sub.key = entry.key
        self._bound.setdefault(entry.key, set()).add(sub)
        if update is not None and update.complete:
            lines = update.lines if sub.after is None else resume_from(update.lines, *sub.after)
            self._deliver(sub, entry, lines)
        elif sub.after is not None:
            sub.queue(entry.key, Backlog(entry, after=sub.after))
            self._pump(sub)
        else:  # its latest record (from its start, if it is new but big)
            self._defer(
                sub, entry, entry.start if update is not None and not update.found else None
            )

    def _pump(self, sub: Subscription) -> None:
        if not sub.pumping and sub.backlog:
            sub.pumping = True
            sub.subscriber.spawn(lambda: self._run_pump(sub))

    async def _run_pump(self, sub: Subscription) -> None:
        """Catch up every key in the backlog, a batch at a time, in turn."""
        outbox = sub.subscriber.outbox
        try:
            while sub.backlog and not sub.closed:
                if not await outbox.wait_space():
                    return
                key, cursor = next(iter(sub.backlog.items()))
                if cursor.after is not None:
                    await self._find_resume(cursor)
                    continue
                finished = await self._step(sub, key, cursor)
                if cursor.failures:
                    await anyio.sleep(RETRY_DELAY)
                if not finished and key in sub.backlog:  # round robin
                    del sub.backlog[key]
                    sub.backlog[key] = cursor
        finally:
            sub.pumping = False

    async def _find_resume(self, cursor: Backlog) -> None:
        entry, after = cursor.entry, cursor.after
        assert after is not None
        cursor.after = None
        until = entry.position
        if until is None:  # no trace (yet): its records from the first, when it comes
            cursor.position = entry.start
            return
        try:
            cursor.position = await anyio.to_thread.run_sync(
                resume_position, entry.root, entry.workflow_id, *after, until
            )
        except OSError as exc:
            log.warning("resuming %s: %s; sending new records only", entry.path, exc)
            cursor.position = entry.position

    async def _step(self, sub: Subscription, key: Key, cursor: Backlog) -> bool:
        """One batch for one key; True when the key is caught up (and live again)."""
        entry = self._index.get(key)
        if entry is None:  # gone: live again (it may come back)
            del sub.backlog[key]
            return True
        if cursor.first is not None:
            sub.send(bodies_of(entry, [cursor.first]))
            cursor.first = None
        if entry is not cursor.entry or entry.gen != cursor.gen:  # replaced: from its start
            cursor.entry, cursor.gen, cursor.position = entry, entry.gen, entry.start
            cursor.failures = 0
            if cursor.position is None:  # no file now: live again
                del sub.backlog[key]
                return True
        until = entry.position
        if cursor.position is None or until is None:
            del sub.backlog[key]
            return True
        if cursor.position == until or (
            cursor.position[0] == until[0] and cursor.position[1] >= until[1]
        ):
            del sub.backlog[key]
            return True
        position = cursor.position
        found = await anyio.to_thread.run_sync(
            read_range, entry.root, entry.workflow_id, position, until, READ_BATCH_BYTES
        )
        if sub.closed or cursor is not sub.backlog.get(key):
            return False  # stopped, or started again, while reading
        if found is None:  # changed under us: the index will see it shortly
            cursor.failures += 1
            if cursor.failures > RETRIES:  # its file is gone: on from the oldest left
                log.warning("%s: a rotated part went before it was read", entry.path)
                start = await anyio.to_thread.run_sync(oldest, entry.root, entry.workflow_id)
                cursor.failures = 0
                if start is None or start == cursor.position:
                    sub.backlog.pop(key, None)
                    return True
                cursor.position = start
            return False
        cursor.failures = 0
        records, cursor.position = found
        sub.send(bodies_of(entry, records))
        return False
