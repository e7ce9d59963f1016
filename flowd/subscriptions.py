"""``watch`` subscriptions: who gets which records, in which order.

A subscription is on one workflow (bound to its (root, id) once it exists; *pending*
until then) or on every workflow. Live records come from the index's ``Update``\\ s,
pushed to each subscriber's outbox as they are read. Catching up is done by a task per
subscription that reads at the client's pace: the latest record of every workflow for
a watch of all, or the file from where the client left off (``after``). While a key is
being caught up, live updates for it are left to the catch-up, which reads up to the
index's offset and then hands over to the live path in one synchronous step, so
nothing is sent twice or out of order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.to_thread

from flowd.index import Entry, Index, Key, Update
from flowd.outbox import Outbox
from flowd.protocol import trace_body, trace_prefix
from flowd.traces import Line, read_range, resume_from, resume_offset

log = logging.getLogger("flowd")

RETRY_DELAY: Final = 0.05
RETRIES: Final = 40

K = TypeVar("K")
After = tuple[str | None, int]  # (run, step) the client saw last


class Session(Protocol):
    """What a subscription needs from its connection."""

    @property
    def outbox(self) -> Outbox: ...

    def spawn(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None: ...


class Subscription:
    __slots__ = (
        "after",
        "catching_up",
        "closed",
        "id",
        "key",
        "prefix",
        "root",
        "session",
        "workflow_id",
    )

    def __init__(
        self,
        ident: str,
        session: Session,
        workflow_id: str | None,
        root: str | None,
        after: After | None = None,
    ) -> None:
        self.id = ident
        self.session = session
        self.workflow_id = workflow_id  # None: every workflow
        self.root = root  # None: any root
        self.after = after
        self.key: Key | None = None  # the workflow it is bound to
        self.catching_up: set[Key] = set()
        self.closed = False
        self.prefix = trace_prefix(ident)

    def matches_root(self, entry: Entry) -> bool:
        return self.root is None or self.root == entry.root

    def send(self, bodies: Iterable[bytes], live: bool) -> None:
        outbox = self.session.outbox
        for body in bodies:
            if live:
                outbox.push(self.prefix + body)
            else:
                outbox.put(self.prefix + body)


def bodies_of(entry: Entry, lines: Iterable[Line]) -> list[bytes]:
    return [trace_body(entry.workflow_id, entry.root, line.raw) for line in lines]


class Hub:
    def __init__(self, index: Index) -> None:
        self._index = index
        self._bound: dict[Key, set[Subscription]] = {}
        self._pending: dict[str, set[Subscription]] = {}
        self._everything: set[Subscription] = set()

    def __len__(self) -> int:
        return (
            sum(map(len, self._bound.values()))
            + sum(map(len, self._pending.values()))
            + len(self._everything)
        )

    def start(self, sub: Subscription) -> None:
        """Begin sending: call right after the ``watch`` response is queued."""
        if sub.workflow_id is None:
            keys = [entry.key for entry in self._index.entries() if sub.matches_root(entry)]
            sub.catching_up.update(keys)
            self._everything.add(sub)
            sub.session.spawn(lambda: self._snapshot(sub, keys))
            return
        entry = self._index.resolve(sub.workflow_id, sub.root)
        if entry is None:
            self._pending.setdefault(sub.workflow_id, set()).add(sub)
        else:
            self._bind(sub, entry, None)

    def stop(self, sub: Subscription) -> None:
        sub.closed = True
        self._everything.discard(sub)
        if sub.key is not None:
            _discard(self._bound, sub.key, sub)
        if sub.workflow_id is not None:
            _discard(self._pending, sub.workflow_id, sub)

    def publish(self, update: Update) -> None:
        entry = update.entry
        key = entry.key
        bodies: list[bytes] | None = None
        if update.lines:
            for sub in (*self._bound.get(key, ()), *self._everything):
                if key in sub.catching_up or not sub.matches_root(entry):
                    continue
                if bodies is None:
                    bodies = bodies_of(entry, update.lines)
                sub.send(bodies, live=True)
        waiting = self._pending.get(entry.workflow_id)
        if waiting:
            for sub in [sub for sub in waiting if sub.matches_root(entry)]:
                waiting.discard(sub)
                self._bind(sub, entry, update)
            if not waiting:
                del self._pending[entry.workflow_id]

    def _bind(self, sub: Subscription, entry: Entry, update: Update | None) -> None:
        sub.key = entry.key
        self._bound.setdefault(entry.key, set()).add(sub)
        if sub.after is not None:
            if update is not None and update.complete:
                sub.send(bodies_of(entry, resume_from(update.lines, *sub.after)), live=True)
                return
            sub.catching_up.add(entry.key)
            sub.session.spawn(lambda: self._replay(sub, entry))
        elif update is not None:
            sub.send(bodies_of(entry, update.lines), live=True)
        elif entry.latest is not None:
            sub.send(bodies_of(entry, [entry.latest]), live=True)

    async def _snapshot(self, sub: Subscription, keys: list[Key]) -> None:
        """The latest record of every workflow, at the client's pace."""
        for key in keys:
            await sub.session.outbox.wait_space()
            if sub.closed or sub.session.outbox.done:
                return
            if key not in sub.catching_up:
                continue
            sub.catching_up.discard(key)
            entry = self._index.get(key)
            if entry is not None and entry.latest is not None:
                sub.send(bodies_of(entry, [entry.latest]), live=False)

    async def _replay(self, sub: Subscription, entry: Entry) -> None:
        """Every record after ``sub.after``, read from the file at the client's pace."""
        assert sub.after is not None
        key, gen = entry.key, entry.gen
        try:
            cursor = await anyio.to_thread.run_sync(
                resume_offset, entry.path, *sub.after, entry.offset
            )
        except OSError as exc:
            log.warning("replay of %s: %s; sending new records only", entry.path, exc)
            cursor = entry.offset
        failures = 0
        while True:
            await sub.session.outbox.wait_space()
            if sub.closed or sub.session.outbox.done:
                return
            current = self._index.get(key)
            if current is None:
                break  # gone: live from here (it may appear again)
            if current is not entry or current.gen != gen:
                entry, gen, cursor = current, current.gen, 0  # replaced: from its start
            if cursor >= entry.offset:
                break
            try:
                found = read_range(entry.path, cursor, entry.offset, entry.ident)
            except OSError:
                found = None
            if found is None:  # changed under us: the index will see it shortly
                failures += 1
                if failures > RETRIES:
                    break
                await anyio.sleep(RETRY_DELAY)
                continue
            cursor = found.end
            sub.send(bodies_of(entry, found.lines), live=False)
        sub.catching_up.discard(key)


def _discard(table: dict[K, set[Subscription]], key: K, sub: Subscription) -> None:
    subs = table.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del table[key]
