"""The daemon's state and its one change loop: roots, the index, watches, subscriptions.

``Daemon.load`` indexes every root before flowd says it is ready; ``Daemon.run`` then
keeps the index current: it waits for inotify events or the next poll that is due,
reads what changed, and publishes each ``Update`` to the subscriptions. Files are read
in worker threads, in batches of bounded work (``READ_SLICE`` seconds at most), and
the index is changed on the event loop between them: whatever sits in a root (a FIFO,
a sparse terabyte, an endless line), requests are answered meanwhile and SIGTERM is
heard within a slice.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel
import anyio.to_thread

from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.registry import ADDED_ROOTS, forget_missing, system_refusal
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME, part_number
from doeff_flow_core.tracefiles.safeopen import Directory
from flowd.discovery import (
    ARGUMENT,
    REGISTRY,
    REGISTRY_POLL,
    RPC,
    RegistryWatch,
    forget_root,
    refusal,
    remember_root,
    remembered_roots,
    root_path,
)
from flowd.errors import WatcherUnavailable
from flowd.index import (
    FOLLOW,
    FRESH,
    LATEST,
    Entry,
    Index,
    Job,
    Liveness,
    Read,
    Root,
    Update,
    job_for,
    read_job,
    workflow_names,
)
from flowd.otlp.feed import SpanFeed
from flowd.subscriptions import Hub
from flowd.watching import (
    CAME,
    ENTRY_MASK,
    GONE,
    IN_ATTRIB,
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
    UNWATCH_AFTER,
    Event,
    Inotify,
    Schedule,
    jittered,
    next_poll,
)

log = logging.getLogger("flowd")

SLICE: Final = 256  # workflows added between two checkpoints
MOST_DUE: Final = 2000  # polls (and reads) run between two looks at inotify
READ_BATCH: Final = 512  # reads handed to a worker thread at once
READ_SLICE: Final = 0.05  # seconds a worker thread reads before handing back
IDLE_WAIT: Final = 3600.0
TICK: Final = 0.05
SWEEP_INTERVAL: Final = 30.0  # how often idle workflows lose their watch
IDLE_SLICE: Final = 2000  # idle workflows a root's check looks at (all, in turn)

Target = Root | Entry


@dataclass(frozen=True)
class Forgotten:
    """A root ``roots.remove`` dropped: how it was a root (None: it was only listed, not
    indexed), the workflows that left the index with it, and the lists it left."""

    path: str
    origin: str | None
    workflows: int
    lists: tuple[str, ...]


def read_batch(jobs: list[Job], reads: list[Read]) -> None:
    """Do jobs in turn (in a worker thread) until READ_SLICE has passed; the ones left
    over are the caller's to queue again. Each read is bounded on its own; each root is
    opened once a batch."""
    deadline = time.monotonic() + READ_SLICE
    roots: dict[str, Directory | None] = {}
    try:
        for job in jobs:
            if job.root not in roots:
                try:
                    roots[job.root] = Directory.open(job.root)
                except OSError:
                    roots[job.root] = None  # each read says why
            reads.append(read_job(job, roots[job.root]))
            if time.monotonic() > deadline:
                return
    finally:
        for root in roots.values():
            if root is not None:
                root.close()


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
        self._refused: set[str] = set()  # registered paths refused (warned once)
        self._schedule = Schedule()
        self._dirty: dict[Entry, None] = {}
        self._reads: dict[Entry, str] = {}  # entries to read, and how
        self._watched: set[Entry] = set()  # workflows with a watch of their own
        self._swept = time.monotonic()
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
        ready). Registered directories that no longer exist are forgotten first, and
        added roots that may not be roots (a system directory, another user's, added by
        an older flowd) are dropped from the list."""
        try:
            gone = await anyio.to_thread.run_sync(forget_missing)
        except OSError as exc:
            log.warning("registry: cannot forget directories that are gone: %s", exc)
        else:
            if gone:
                log.info("registry: forgot %d directories that no longer exist", len(gone))
        for path in self._arguments:
            await self.add_root(path, ARGUMENT)
        await self._check_registry()
        refused: dict[str, str] = {}
        for added in remembered_roots():
            path = root_path(added)
            try:
                reason = refusal(path) if os.path.isdir(path) else system_refusal(path)
            except OSError:
                reason = None
            if reason is not None:
                refused[added] = reason
                log.warning("root %s (rpc): %s; forgotten", path, reason)
                continue
            await self.add_root(path, RPC)
        if refused:
            try:
                await anyio.to_thread.run_sync(ADDED_ROOTS.remove, refused.__contains__)
            except OSError as exc:
                log.warning("%s: cannot drop refused roots: %s", ADDED_ROOTS.path, exc)

    async def add_rpc_root(self, path: str) -> bool:
        """``roots.add``: index a root and remember it for the next start."""
        added = await self.add_root(path, RPC)
        if not remember_root(path):
            log.warning("root %s: could not be remembered for the next start", path)
        return added

    async def forget_rpc_root(self, path: str) -> Forgotten | None:
        """``roots.remove``: stop indexing a root and drop it from the lists that would
        bring it back at the next start; None when it is neither a root nor listed.
        OSError (and nothing dropped from the index) when a list cannot be rewritten."""
        root = self.index.roots.get(path)
        origin = None if root is None else root.origin
        workflows = 0 if root is None else len(root.entries)
        # the lists first: the registry's watch, meanwhile, then finds it gone itself
        lists = await anyio.to_thread.run_sync(forget_root, path)
        if root is None and not lists:
            return None
        self.remove_root(path)
        return Forgotten(path, origin, workflows, tuple(lists))

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
        self._schedule.cancel(root.track)
        for entry in self.index.remove_root(path):
            self._forget(entry)
        log.info("root %s: no longer registered", path)

    async def _check_registry(self) -> None:
        registered = self._registry.poll()
        if registered is None:
            return
        for path in registered:
            reason = system_refusal(path)
            if reason is not None:
                if path not in self._refused:
                    self._refused.add(path)
                    log.warning("registered %s: %s; not indexed", path, reason)
                continue
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
            self._schedule.add(root.track, time.monotonic(), ROOT_MISSING)
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
        await self._read_pending()
        interval = SAFETY_INTERVAL if root.track.watch >= 0 else ROOT_POLL
        self._schedule.add(root.track, time.monotonic(), jittered(interval))

    def _rescan(self, root: Root) -> None:
        """Compare a root's directories with the index (a poll, or a lost event)."""
        try:
            stat = os.stat(root.path)
            if root.track.watch < 0 and stat.st_mtime_ns == root.mtime:
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
        self._schedule.add(root.track, time.monotonic(), ROOT_MISSING)

    # -- workflows --------------------------------------------------------------------

    def _add_workflow(self, root: Root, name: str, fresh: bool) -> None:
        """Index a workflow directory: read in full when it appeared while flowd runs
        (``fresh``; watched, since a run is starting), else its latest record."""
        entry = self.index.add_workflow(root, name)
        if entry is None:
            return
        watched = fresh and self._watch(entry, entry.directory, ENTRY_MASK)
        unseen = fresh and not watched and self._inotify is not None
        if unseen and not os.path.isdir(entry.directory):
            self.index.remove_workflow(root, name)  # gone already
            return
        if fresh:
            entry.tracked().changed = time.monotonic()
        self._reads[entry] = FRESH if fresh else LATEST

    def _remove_workflow(self, root: Root, name: str) -> None:
        entry = self.index.remove_workflow(root, name)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        if self.spans is not None:
            self.spans.forget(entry)
        self._unwatch(entry)
        self._schedule.cancel(entry.track)
        self._dirty.pop(entry, None)
        self._reads.pop(entry, None)

    async def _read_pending(self) -> None:
        """Read every entry waiting to be read, a batch at a time in a worker thread."""
        while self._reads:
            batch: list[tuple[Entry, str]] = []
            for entry, mode in list(itertools.islice(self._reads.items(), READ_BATCH * 2)):
                if len(batch) >= READ_BATCH:
                    break
                if entry.reading:
                    continue
                del self._reads[entry]
                if entry.removed:
                    continue
                entry.reading = True
                batch.append((entry, mode))
            if not batch:
                await anyio.sleep(TICK)  # the ones left are being read elsewhere
                continue
            reads: list[Read] = []
            jobs = [job_for(entry, mode) for entry, mode in batch]
            try:
                await anyio.to_thread.run_sync(read_batch, jobs, reads)
            finally:
                for (entry, mode), read in itertools.zip_longest(batch, reads):
                    entry.reading = False
                    if read is None:
                        self._reads.setdefault(entry, mode)  # not reached: next batch
                    elif not entry.removed:
                        self._applied(entry, read)
            await anyio.lowlevel.checkpoint()

    def _applied(self, entry: Entry, read: Read) -> None:
        with _guard(entry):
            update = self.index.apply(entry, read)
            if update is not None:
                self._publish(update)
                if update.lines and update.complete:
                    entry.tracked().changed = time.monotonic()
        if entry.behind:
            self._reads.setdefault(entry, FOLLOW)
        self._keep_track(entry)

    def _keep_track(self, entry: Entry) -> None:
        """Watch a workflow while it runs or changes; poll it, rarely, once idle."""
        if entry.track.watch < 0 and self._inotify is not None and self._active(entry):
            self._watch(entry, entry.directory, ENTRY_MASK)
        track = entry.track
        now = time.monotonic()
        if track.watch >= 0:
            self._watched.add(entry)
            if track.due == float("inf"):
                self._schedule.add(track, now, jittered(SAFETY_INTERVAL))
        elif self._inotify is not None and not self._active(entry):
            # idle: the root's watch hears a run starting (the writer touches its
            # directory), and the root's sweep looks at it now and then
            self._schedule.cancel(track)
            entry.untrack()
        elif track.due == float("inf"):
            latest = entry.latest
            # a finished workflow's trace changes only if it is run again
            ended = latest is not None and latest.status != "running"
            track = entry.tracked()
            track.interval = POLL_IDLE_MAX if ended else next_poll(0, True)
            self._schedule.add(track, now, jittered(track.interval))

    def _active(self, entry: Entry) -> bool:
        latest = entry.latest
        recent = time.monotonic() - entry.track.changed < UNWATCH_AFTER
        return recent or (latest is not None and latest.status == "running")

    def _sweep_watches(self) -> None:
        """Idle workflows give their watch back: finished, or unchanged for a while with
        a writer that is gone."""
        self._swept = time.monotonic()
        liveness = Liveness()
        for entry in list(self._watched):
            if entry.removed or entry.track.watch < 0:
                self._watched.discard(entry)
                continue
            latest = entry.latest
            if time.monotonic() - entry.track.changed < UNWATCH_AFTER:
                continue
            if latest is not None and liveness.status(latest) == "running":
                continue
            self._unwatch(entry)
            self._watched.discard(entry)
            self._schedule.cancel(entry.track)  # the root's sweep looks at it now and then
            entry.untrack()

    def _sweep_idle(self, root: Root) -> None:
        """Look at the next IDLE_SLICE idle workflows of a root (a safety net: a run
        starting is heard through the root's watch), round the root in turn."""
        names = root.sweep
        if names is None:
            names = root.sweep = iter(list(root.entries))
        looked = 0
        for name in itertools.islice(names, IDLE_SLICE):
            looked += 1
            entry = root.entries.get(name)
            if entry is not None and entry.track.watch < 0 and not entry.reading:
                with _guard(entry):
                    self._poll(entry)
        if looked < IDLE_SLICE:
            root.sweep = None  # round done: the next sweep starts again

    def _refresh(self, entry: Entry) -> None:
        """Read what is new in a trace (soon, in a batch)."""
        if not entry.removed and entry not in self._reads:
            self._reads[entry] = FOLLOW

    def _poll(self, entry: Entry) -> bool:
        """A cheap look (``lstat``) at a trace, and a read when it differs."""
        newest = entry.newest
        try:
            status = os.lstat(entry.path)
            same = newest is not None and (
                (status.st_dev, status.st_ino) == newest.ident and status.st_size == newest.size
            )
        except OSError:
            same = newest is None and entry.cursor.ident is None
        if same and not entry.track.replaced:
            return False
        if entry.track.watch >= 0:
            log.debug("%s changed with no inotify event", entry.path)
        entry.tracked().changed = time.monotonic()
        self._refresh(entry)
        return True

    def _publish(self, update: Update) -> None:
        self.hub.publish(update)
        if self.spans is not None:
            with _guard(f"{update.entry.path}: spans"):
                self.spans.feed(update)
        for line in update.lines:
            line.record = None  # handed on: the index keeps only bytes

    # -- inotify ----------------------------------------------------------------------

    def _watch(self, target: Target, path: str, mask: int) -> bool:
        if self._inotify is None or target.track.watch >= 0:
            return target.track.watch >= 0
        try:
            wd = self._inotify.add(path, mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._out_of_watches:
                self._out_of_watches = True
                log.warning("inotify watch limit reached; polling the traces beyond it")
            return False
        (target.tracked() if isinstance(target, Entry) else target.track).watch = wd
        self._wds.setdefault(wd, []).append(target)
        return True

    def _unwatch(self, target: Target) -> None:
        track = target.track
        wd = track.watch
        if wd < 0:
            return
        track.watch = -1
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
                    target.track.watch = -1
                    if isinstance(target, Root):
                        self._schedule.add(target.track, time.monotonic(), 0)
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
        elif event.mask & IN_ATTRIB:
            entry = root.entries.get(event.name)
            if entry is not None:  # touched by a writer starting a run: watch it again
                entry.tracked().changed = time.monotonic()
                self._keep_track(entry)
                self._dirty[entry] = None
        elif event.mask & CAME:
            self._add_workflow(root, event.name, fresh=True)
        elif event.mask & GONE:
            self._remove_workflow(root, event.name)

    def _on_entry_event(self, entry: Entry, event: Event) -> None:
        if event.name != TRACE_FILE_NAME:
            track = entry.track
            if (
                event.mask & IN_MOVED_TO
                and track.moving is not None
                and track.moving[0] == event.cookie
                and part_number(event.name)
            ):
                # trace.jsonl renamed to a rotated part: a rotation, which refresh follows
                # by the file's identity. Not a replacement: the file still exists, so no
                # new one can reuse its inode, and the flag may be stale (a refresh that
                # followed the rotation before this event came would read the new
                # trace.jsonl again from its start: records repeated, pumps sent ahead)
                track.replaced = track.replaced and track.moving[1]
                track.moving = None
            return
        track = entry.track
        if event.mask & IN_MOVED_FROM and event.cookie:
            track.moving = (event.cookie, track.replaced)
        if event.mask & GONE:
            track.replaced = True  # the file we read left: whatever comes is another
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
            group.start_soon(self.hub.run)
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
            if self._dirty or self._reads:
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
            await self._read_pending()
            if time.monotonic() - self._swept > SWEEP_INTERVAL:
                self._sweep_watches()
            await anyio.lowlevel.checkpoint()

    def _run_due(self) -> None:
        now = time.monotonic()
        for track in self._schedule.pop_due(now, MOST_DUE):
            item = track.owner  # type: ignore[attr-defined]
            if isinstance(item, Entry):
                if item.removed:
                    continue
                changed = False
                with _guard(item):
                    changed = self._poll(item)
                if item.track.watch >= 0:
                    self._schedule.add(track, now, jittered(SAFETY_INTERVAL))
                elif self._inotify is not None and not self._active(item):
                    pass  # idle: the root's sweep looks at it
                else:
                    track.interval = next_poll(track.interval, changed)
                    self._schedule.add(track, now, track.interval)
            elif isinstance(item, Root):
                with _guard(item.path):
                    self._check_root(item, now)
                if track.due == float("inf") and item.path in self.index.roots:
                    self._schedule.add(track, now, ROOT_MISSING)  # it failed: look again

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
                self._schedule.add(root.track, now, ROOT_MISSING)
                return
        else:
            if root.track.watch < 0:
                self._watch(root, root.path, ROOT_MASK)
            self._rescan(root)
        watched = root.track.watch >= 0
        if root.present and self._inotify is not None:
            self._sweep_idle(root)
        if root.present:
            interval = SAFETY_INTERVAL if watched else ROOT_POLL
            self._schedule.add(root.track, now, jittered(interval) if watched else interval)
        else:
            self._schedule.add(root.track, now, ROOT_MISSING)


@contextlib.contextmanager
def _guard(what: object) -> Iterator[None]:
    """A bug met while handling one thing is logged, and the daemon goes on."""
    try:
        yield
    except Exception as exc:
        log.error("%s: %s: %s", what, type(exc).__name__, exc)
        log.debug("%s", what, exc_info=True)
