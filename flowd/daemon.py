"""The daemon's state and its one change loop: roots, the index, watches, subscriptions.

``Daemon.load`` indexes every root before flowd says it is ready; ``Daemon.run`` then
keeps the index current: it waits for inotify events or the next poll that is due,
refreshes what changed, and publishes each ``Update`` to the subscriptions. All index
changes happen on the event loop, in slices, so requests are answered meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Final

import anyio
import anyio.lowlevel

from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME
from flowd.discovery import (
    ARGUMENT,
    REGISTRY,
    REGISTRY_POLL,
    RPC,
    RegistryWatch,
    remember_root,
    remembered_roots,
    root_path,
)
from flowd.errors import WatcherUnavailable
from flowd.index import Entry, Index, Root, Update, workflow_names
from flowd.otlp.feed import SpanFeed
from flowd.subscriptions import Hub
from flowd.traces import ident_of
from flowd.watching import (
    CAME,
    ENTRY_MASK,
    GONE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    POLL_IDLE_MAX,
    ROOT_MASK,
    ROOT_MISSING,
    ROOT_POLL,
    SAFETY_INTERVAL,
    Event,
    Inotify,
    Schedule,
    jittered,
    next_poll,
)

log = logging.getLogger("flowd")

SLICE: Final = 256  # workflows indexed between two checkpoints
MOST_DUE: Final = 2000  # polls (and refreshes) run between two looks at inotify
IDLE_WAIT: Final = 3600.0
TICK: Final = 0.05

Target = Root | Entry


class Daemon:
    def __init__(
        self, roots: Iterable[str] = (), watcher: str = "auto", spans: SpanFeed | None = None
    ) -> None:
        self.index = Index()
        self.hub = Hub(self.index)
        self.spans = spans  # every update also goes there when spans are exported
        self.started = time.monotonic()
        self._arguments = [root_path(path) for path in roots]
        self._registry = RegistryWatch()
        self._schedule = Schedule()
        self._dirty: dict[Entry, None] = {}
        self._wds: dict[int, list[Target]] = {}
        self._out_of_watches = False
        self._inotify: Inotify | None = None
        if watcher != "poll":
            try:
                self._inotify = Inotify()
            except OSError as exc:
                if watcher == "inotify":
                    raise WatcherUnavailable(exc) from None
                log.warning("%s; polling traces instead", exc.strerror)
        self.watcher = "inotify" if self._inotify is not None else "poll"

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # -- roots ------------------------------------------------------------------------

    async def load(self) -> None:
        """Index every root given, registered and added before (before flowd reports
        ready)."""
        for path in self._arguments:
            await self.add_root(path, ARGUMENT)
        await self._check_registry()
        for path in remembered_roots():
            await self.add_root(root_path(path), RPC)

    async def add_rpc_root(self, path: str) -> bool:
        """``roots.add``: index a root and remember it for the next start."""
        added = await self.add_root(path, RPC)
        if not remember_root(path):
            log.warning("root %s: could not be remembered for the next start", path)
        return added

    async def add_root(self, path: str, origin: str) -> bool:
        """Index a new root; False when it is one already."""
        root = self.index.add_root(path, origin)
        if root is None:
            return False
        await self._scan(root, fresh=False)
        state = f"{len(root.entries)} workflows" if root.present else "missing; watching for it"
        log.info("root %s (%s): %s", path, origin, state)
        return True

    def remove_root(self, path: str) -> None:
        root = self.index.roots.get(path)
        if root is None:
            return
        self._unwatch(root)
        self._schedule.cancel(root)
        for entry in self.index.remove_root(path):
            self._forget(entry)
        log.info("root %s: no longer registered", path)

    async def _check_registry(self) -> None:
        registered = self._registry.poll()
        if registered is None:
            return
        for path in registered:
            await self.add_root(path, REGISTRY)
        gone = [
            root.path
            for root in self.index.roots.values()
            if root.origin == REGISTRY and root.path not in registered
        ]
        for path in gone:
            self.remove_root(path)

    async def _scan(self, root: Root, fresh: bool) -> None:
        """Index the workflows under a root (watching it first, so none is missed)."""
        self._watch(root, root.path, ROOT_MASK)
        try:
            stat = os.stat(root.path)
            names = workflow_names(root.path)
        except OSError:
            self._unwatch(root)
            root.present = False
            self._schedule.add(root, time.monotonic(), ROOT_MISSING)
            return
        root.present = True
        root.mtime = stat.st_mtime_ns
        for count, name in enumerate(sorted(names), 1):
            if root.path not in self.index.roots:
                return  # removed meanwhile
            with _guard(os.path.join(root.path, name)):
                self._add_workflow(root, name, fresh)
            if count % SLICE == 0:
                await anyio.lowlevel.checkpoint()
        interval = SAFETY_INTERVAL if root.watch >= 0 else ROOT_POLL
        self._schedule.add(root, time.monotonic(), jittered(interval))

    def _rescan(self, root: Root) -> None:
        """Compare a root's directories with the index (a poll, or a lost event)."""
        try:
            stat = os.stat(root.path)
            if root.watch < 0 and stat.st_mtime_ns == root.mtime:
                return
            names = workflow_names(root.path)
        except OSError:
            self._root_gone(root)
            return
        root.mtime = stat.st_mtime_ns
        for name in names - root.entries.keys():
            self._add_workflow(root, name, fresh=True)
        for name in root.entries.keys() - names:
            self._remove_workflow(root, name)

    def _root_gone(self, root: Root) -> None:
        if root.present:
            log.info("root %s: gone; watching for it", root.path)
        self._unwatch(root)
        for entry in self.index.clear_root(root):
            self._forget(entry)
        self._schedule.add(root, time.monotonic(), ROOT_MISSING)

    # -- workflows --------------------------------------------------------------------

    def _add_workflow(self, root: Root, name: str, fresh: bool) -> None:
        entry = self.index.add_workflow(root, name)
        if entry is None:
            return
        watched = self._watch(entry, entry.directory, ENTRY_MASK)
        if not watched and self._inotify is not None and not os.path.isdir(entry.directory):
            self.index.remove_workflow(root, name)  # gone already
            return
        self._publish(self.index.load(entry, fresh))
        if entry.watch >= 0:
            self._schedule.add(entry, time.monotonic(), jittered(SAFETY_INTERVAL))
        else:
            latest = entry.latest
            # a finished workflow's trace changes only if it is run again: poll it rarely
            ended = latest is not None and latest.status != "running" and not fresh
            entry.interval = POLL_IDLE_MAX if ended else next_poll(0, True)
            self._schedule.add(entry, time.monotonic(), jittered(entry.interval))

    def _remove_workflow(self, root: Root, name: str) -> None:
        entry = self.index.remove_workflow(root, name)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        if self.spans is not None:
            self.spans.forget(entry)
        self._unwatch(entry)
        self._schedule.cancel(entry)
        self._dirty.pop(entry, None)

    def _refresh(self, entry: Entry) -> bool:
        """Read what is new in a trace; True if anything was."""
        if entry.removed:
            return False
        before = (entry.gen, entry.offset, entry.size)
        update = None
        with _guard(entry.path):
            update = self.index.refresh(entry)
        if update is not None:
            self._publish(update)
        if entry.behind:
            self._dirty[entry] = None
        return update is not None or before != (entry.gen, entry.offset, entry.size)

    def _poll(self, entry: Entry) -> bool:
        """A cheap look (``stat``) at a trace, and a refresh when it differs."""
        try:
            stat = os.stat(entry.path)
            same = ident_of(stat) == entry.ident and stat.st_size == entry.size
        except OSError:
            same = entry.size < 0
        if same and not entry.replaced:
            return False
        if entry.watch >= 0:
            log.debug("%s changed with no inotify event", entry.path)
        return self._refresh(entry)

    def _publish(self, update: Update) -> None:
        self.hub.publish(update)
        if self.spans is not None:
            with _guard(f"{update.entry.path}: spans"):
                self.spans.feed(update)
        for line in update.lines:
            line.record = None  # handed on: the index keeps only bytes

    # -- inotify ----------------------------------------------------------------------

    def _watch(self, target: Target, path: str, mask: int) -> bool:
        if self._inotify is None or target.watch >= 0:
            return target.watch >= 0
        try:
            wd = self._inotify.add(path, mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._out_of_watches:
                self._out_of_watches = True
                log.warning("inotify watch limit reached; polling the traces beyond it")
            return False
        target.watch = wd
        self._wds.setdefault(wd, []).append(target)
        return True

    def _unwatch(self, target: Target) -> None:
        wd, target.watch = target.watch, -1
        if wd < 0:
            return
        targets = self._wds.get(wd, [])
        if target in targets:
            targets.remove(target)
        if not targets:
            self._wds.pop(wd, None)
            if self._inotify is not None:
                self._inotify.remove(wd)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed; rescanning every root")
                self._rescan_everything()
                continue
            targets = self._wds.get(event.wd)
            if not targets:
                continue
            if event.mask & IN_IGNORED:
                del self._wds[event.wd]
                for target in targets:
                    target.watch = -1
                    if isinstance(target, Root):
                        self._schedule.add(target, time.monotonic(), 0)
                continue
            for target in list(targets):
                with _guard("an inotify event"):
                    if isinstance(target, Root):
                        self._on_root_event(target, event)
                    else:
                        self._on_entry_event(target, event)

    def _on_root_event(self, root: Root, event: Event) -> None:
        if event.mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            self._root_gone(root)
        elif not event.mask & IN_ISDIR or not is_workflow_id(event.name):
            return
        elif event.mask & CAME:
            self._add_workflow(root, event.name, fresh=True)
        elif event.mask & GONE:
            self._remove_workflow(root, event.name)

    def _on_entry_event(self, entry: Entry, event: Event) -> None:
        if event.name != TRACE_FILE_NAME:
            if (
                event.mask & IN_MOVED_TO
                and entry.moving is not None
                and entry.moving[0] == event.cookie
                and _is_part_name(event.name)
            ):
                # trace.jsonl renamed to a rotated part: a rotation, which refresh follows
                # by the file's identity. Not a replacement: the file still exists, so no
                # new one can reuse its inode, and the flag may be stale (a refresh that
                # followed the rotation before this event came would read the new
                # trace.jsonl again from its start: records repeated, pumps sent ahead)
                entry.replaced = entry.replaced and entry.moving[1]
                entry.moving = None
            return
        if event.mask & IN_MOVED_FROM and event.cookie:
            entry.moving = (event.cookie, entry.replaced)
        if event.mask & GONE:
            entry.replaced = True  # the file we read left: whatever comes is another
        self._dirty[entry] = None

    def _rescan_everything(self) -> None:
        for root in list(self.index.roots.values()):
            if root.present:
                self._rescan(root)
        for entry in list(self.index.entries()):
            self._dirty[entry] = None

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the index current, forever."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._registry_loop)
            await self._change_loop()

    async def _registry_loop(self) -> None:
        while True:
            await anyio.sleep(REGISTRY_POLL)
            try:
                await self._check_registry()
            except Exception as exc:
                log.error("reading the registry: %s: %s", type(exc).__name__, exc)

    async def _change_loop(self) -> None:
        while True:
            now = time.monotonic()
            due = self._schedule.next_due()
            # polls due close together are run together: at most one wake-up per TICK
            wait = IDLE_WAIT if due is None else max(TICK, due - now)
            if self._dirty:
                wait = 0.0
            if self._inotify is not None:
                with anyio.move_on_after(wait):
                    await anyio.wait_readable(self._inotify.fd)
                if self._inotify is not None:
                    self._on_events(self._inotify.read())
            else:
                await anyio.sleep(wait)
            self._run_due()
            dirty = list(itertools.islice(self._dirty, MOST_DUE))
            for entry in dirty:
                del self._dirty[entry]
                self._refresh(entry)
            await anyio.lowlevel.checkpoint()

    def _run_due(self) -> None:
        now = time.monotonic()
        for item in self._schedule.pop_due(now, MOST_DUE):
            if isinstance(item, Entry):
                if item.removed:
                    continue
                changed = False
                with _guard(item.path):
                    changed = self._poll(item)
                if item.watch >= 0:
                    self._schedule.add(item, now, jittered(SAFETY_INTERVAL))
                else:
                    item.interval = next_poll(item.interval, changed)
                    self._schedule.add(item, now, item.interval)
            elif isinstance(item, Root):
                with _guard(item.path):
                    self._check_root(item, now)
                if item.due == float("inf") and item.path in self.index.roots:
                    self._schedule.add(item, now, ROOT_MISSING)  # it failed: look again

    def _check_root(self, root: Root, now: float) -> None:
        if root.path not in self.index.roots:
            return
        if not root.present:
            if os.path.isdir(root.path):
                log.info("root %s: appeared", root.path)
                self._watch(root, root.path, ROOT_MASK)
                root.present = True
                root.mtime = -1
                self._rescan(root)
            if not root.present:
                self._schedule.add(root, now, ROOT_MISSING)
                return
        else:
            if root.watch < 0:
                self._watch(root, root.path, ROOT_MASK)
            self._rescan(root)
        if root.present:
            interval = SAFETY_INTERVAL if root.watch >= 0 else ROOT_POLL
            self._schedule.add(root, now, jittered(interval) if root.watch >= 0 else interval)
        else:
            self._schedule.add(root, now, ROOT_MISSING)


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    """A bug met while handling one thing is logged, and the daemon goes on."""
    try:
        yield
    except Exception as exc:
        log.error("%s: %s: %s", what, type(exc).__name__, exc)
        log.debug("%s", what, exc_info=True)


def _is_part_name(name: str) -> bool:
    """``trace.jsonl.N``: a rotated part."""
    number = name[len(TRACE_FILE_NAME) + 1 :]
    return name.startswith(TRACE_FILE_NAME + ".") and number.isdigit() and number[0] != "0"
