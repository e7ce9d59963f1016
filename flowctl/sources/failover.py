"""``FailoverSource``: flowd while it answers, the trace files while it is away.

A live view through flowd (``watch``, ``history --follow``, the shell's watch) must not
freeze when flowd stops. The feeds this source hands out hold a daemon feed; once its
link says flowd went away, a file feed takes over just after the last record delivered
(the core's ``find_after``), so nothing is lost or repeated. While on files, flowd is
tried again every RETRY seconds; when it answers, a daemon feed watches with ``after`` =
the last record delivered and the file feed is dropped. Each switch is said once in
``notes`` (a plain view prints it on stderr, the full screen on its status line).

The one-shot calls go to flowd, and to the files when it does not answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, TypeVar

from doeff_flow_core import LiveTrace
from doeff_flow_core.registry import ADDED_ROOTS, REGISTRY
from doeff_flow_core.tracefiles.layout import trace_file
from flowctl.errors import (
    AnswerTooLong,
    DaemonUnavailable,
    DaemonUntrusted,
    FlowctlError,
    SourceUnavailable,
)
from flowctl.sources.base import (
    DEFAULT_SNAPSHOT,
    DirectoryFeed,
    DirectoryUpdate,
    Feed,
    FeedUpdate,
    History,
    Notes,
    Source,
    WorkflowEntry,
    split_name,
)
from flowctl.sources.daemon import (
    DaemonDirectoryFeed,
    DaemonFeed,
    DaemonSource,
    Key,
    renamed,
)
from flowctl.sources.files import FileSource, TraceDirFeed, TraceFeed, checked_id

RETRY: Final = 0.5  # seconds between two tries of flowd while reading files
BACK_SHOWN: Final = 10.0  # seconds the full screen keeps saying flowd is back

T = TypeVar("T")


def _fatal(exc: DaemonUnavailable) -> bool:
    """A socket not to use, or an answer too long: said as it is, never failed over."""
    return isinstance(exc, (DaemonUntrusted, AnswerTooLong))


class FailoverSource:
    """A ``DaemonSource`` whose live feeds go on from the trace files while flowd is away."""

    def __init__(self, daemon: DaemonSource, files: FileSource) -> None:
        self.daemon = daemon
        self.files = files
        self.notes = Notes()
        self.away = False

    @property
    def kind(self) -> str:
        return self.files.kind if self.away else self.daemon.kind

    @property
    def location(self) -> str:
        return self.daemon.location

    def went_away(self, directory: str) -> None:
        if not self.away:
            self.away = True
            self.notes.say(f"flowd went away; reading trace files in {directory}")

    def came_back(self) -> None:
        if self.away:
            self.away = False
            where = self.daemon.socket_path
            self.notes.say(f"flowd is back at {where}; reading through it again", BACK_SHOWN)

    def _either(self, call: Callable[[Source], T]) -> T:
        try:
            return call(self.daemon)
        except DaemonUnavailable as exc:
            if _fatal(exc):
                raise
        return call(self.files)

    def list_workflows(self) -> list[WorkflowEntry]:
        return self._either(lambda source: source.list_workflows())

    def workflow_ids(self) -> list[str]:
        return self._either(lambda source: source.workflow_ids())

    def history(self, workflow_id: str, last: int) -> History:
        return self._either(lambda source: source.history(workflow_id, last))

    def trace_path(self, workflow_id: str) -> Path:
        return self._either(lambda source: source.trace_path(workflow_id))

    def status(self, record: LiveTrace) -> str:
        return self.daemon.status(record)

    def follow(
        self, workflow_id: str, *, snapshot: int = DEFAULT_SNAPSHOT, every_record: bool = False
    ) -> FailoverFeed:
        return FailoverFeed(self, workflow_id, snapshot, every_record)

    def follow_all(self) -> FailoverDirectoryFeed:
        return FailoverDirectoryFeed(self)

    def close(self) -> None:
        self.daemon.close()


def registered_roots() -> list[str]:
    """The directories flowd starts from (the writers' registry, the added roots);
    lists that cannot be read count as empty."""
    paths: list[str] = []
    for listing in (REGISTRY, ADDED_ROOTS):
        try:
            paths += listing.read()
        except (OSError, ValueError):
            continue
    return [path for path in paths if os.path.isabs(path)]


def notes_of(source: Source) -> Notes | None:
    """What a live view's source says of itself as it runs (flowd went away, is back)."""
    return source.notes if isinstance(source, FailoverSource) else None


def joined(first: FeedUpdate, then: FeedUpdate) -> FeedUpdate:
    """Two updates in a row as one."""
    if then.reset:
        return FeedUpdate(then.records, then.present, True, first.skipped + then.skipped)
    return FeedUpdate(
        first.records + then.records, then.present, first.reset, first.skipped + then.skipped
    )


class FailoverFeed:
    """One workflow's records from flowd, or from its trace while flowd is away."""

    def __init__(
        self, source: FailoverSource, workflow_id: str, snapshot: int, every_record: bool
    ) -> None:
        self._source = source
        self._name = workflow_id
        self._snapshot = snapshot
        self._every_record = every_record
        self._daemon: DaemonFeed | None = source.daemon.follow(
            workflow_id, snapshot=snapshot, every_record=every_record
        )
        self._files: TraceFeed | None = None
        self._last: LiveTrace | None = None  # the last record delivered, by either
        self._retry_at = 0.0

    def poll(self, timeout: float) -> FeedUpdate:
        if self._daemon is not None:
            return self._poll_daemon(self._daemon, timeout)
        back = self._try_back()
        if back is not None:
            return back
        assert self._files is not None
        return self._delivered(self._files.poll(timeout))

    def _poll_daemon(self, daemon: DaemonFeed, timeout: float) -> FeedUpdate:
        try:
            update = daemon.poll(timeout)
        except DaemonUnavailable as exc:
            if _fatal(exc):
                raise
            update = FeedUpdate(present=self._last is not None)
        else:
            if not daemon.away:
                return self._delivered(update)
        update = self._delivered(update)
        daemon.close()
        self._daemon = None
        self._files = self._file_feed()
        self._retry_at = time.monotonic() + RETRY
        return joined(update, self._delivered(self._files.poll(0)))

    def _file_feed(self) -> TraceFeed:
        """A tail of the trace, just after the last record delivered."""
        workflow_id, _ = split_name(self._name)
        root = self._source.daemon.root_of(self._name) or self._source.files.location
        after = None if self._last is None else (self._last.run, self._last.step)
        path = trace_file(root, checked_id(workflow_id))
        self._source.went_away(root)
        return TraceFeed(path, workflow_id, self._snapshot, self._every_record, after)

    def _try_back(self) -> FeedUpdate | None:
        """flowd watched again after the last record delivered, when it answers now."""
        if time.monotonic() < self._retry_at:
            return None
        self._retry_at = time.monotonic() + RETRY
        daemon = self._source.daemon.follow(
            self._name, snapshot=self._snapshot, every_record=self._every_record, after=self._last
        )
        try:
            update = daemon.poll(0)
        except FlowctlError:  # not back yet, or not ready to answer for this workflow
            daemon.close()
            return None
        if daemon.away:
            daemon.close()
            return None
        if self._files is not None:
            self._files.close()
            self._files = None
        self._daemon = daemon
        self._source.came_back()
        return self._delivered(update)

    def _delivered(self, update: FeedUpdate) -> FeedUpdate:
        if update.reset:
            self._last = None
        if update.records:
            self._last = update.records[-1]
        return update

    def pace(self, interval: float) -> float:
        feed: Feed | None = self._daemon or self._files
        return interval if feed is None else feed.pace(interval)

    def close(self) -> None:
        for feed in (self._daemon, self._files):
            if feed is not None:
                feed.close()


class FailoverDirectoryFeed:
    """Every workflow's latest record from flowd, or from the trace directory while flowd
    is away. A switch lists every workflow again: those the new feed does not list are
    said removed, so nothing stale stays on the dashboard."""

    def __init__(self, source: FailoverSource) -> None:
        self._source = source
        self._daemon: DaemonDirectoryFeed | None = source.daemon.follow_all()
        self._files: DirectoryFeed | None = None
        self._shown: set[str] = set()
        self._retry_at = 0.0

    def poll(self, timeout: float) -> DirectoryUpdate:
        if self._daemon is not None:
            return self._poll_daemon(self._daemon, timeout)
        if time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + RETRY
            daemon = self._source.daemon.follow_all()
            try:
                update = daemon.poll(0)
            except FlowctlError:
                daemon.close()
            else:
                if not daemon.away:
                    if self._files is not None:
                        self._files.close()
                        self._files = None
                    self._daemon = daemon
                    self._source.came_back()
                    return self._switched(update)
                daemon.close()
        assert self._files is not None
        return self._track(self._files.poll(timeout))

    def _poll_daemon(self, daemon: DaemonDirectoryFeed, timeout: float) -> DirectoryUpdate:
        try:
            update = daemon.poll(timeout)
        except DaemonUnavailable as exc:
            if _fatal(exc):
                raise
        else:
            if not daemon.away:
                return self._track(update)
            self._track(update)
        daemon.close()
        self._daemon = None
        if self._source.daemon.root is not None:  # scoped: that directory alone
            directory = self._source.daemon.root
            self._files = FileSource(directory).follow_all()
        else:  # every directory flowd listed, and those it starts from
            roots = [*daemon.roots, self._source.files.location, *registered_roots()]
            feed = RootsFeed(roots)
            self._files, directory = feed, feed.described
        self._source.went_away(directory)
        self._retry_at = time.monotonic() + RETRY
        return self._switched(self._files.poll(0))

    def _switched(self, update: DirectoryUpdate) -> DirectoryUpdate:
        """The first update of a new feed, less whatever the old one showed and it lacks."""
        listed = {entry.name for entry in update.changed}
        removed = tuple(sorted((self._shown - listed) | set(update.removed)))
        return self._track(DirectoryUpdate(update.changed, removed, update.present, True))

    def _track(self, update: DirectoryUpdate) -> DirectoryUpdate:
        self._shown.difference_update(update.removed)
        self._shown.update(entry.name for entry in update.changed)
        return update

    def pace(self, interval: float) -> float:
        feed: DirectoryFeed | None = self._daemon or self._files
        return interval if feed is None else feed.pace(interval)

    def close(self) -> None:
        for feed in (self._daemon, self._files):
            if feed is not None:
                feed.close()


class RootsFeed:
    """Every workflow of several trace directories, named as flowd names them (``id@root``
    where an id is under more than one): flowd's unscoped view, from the files."""

    def __init__(self, roots: Iterable[str]) -> None:
        real = dict.fromkeys(os.path.realpath(os.path.abspath(root)) for root in roots)
        self._feeds = {root: TraceDirFeed(Path(root)) for root in real}
        self._known: dict[Key, WorkflowEntry] = {}
        self._shown: dict[Key, str] = {}

    @property
    def described(self) -> str:
        roots = list(self._feeds)
        more = len(roots) - 2
        return ", ".join(roots) if more <= 0 else f"{', '.join(roots[:2])} and {more} more"

    def poll(self, timeout: float) -> DirectoryUpdate:
        touched = self._check()
        if touched is None and timeout > 0:
            time.sleep(self.pace(timeout))
            touched = self._check()
        return self._update(touched or set())

    def _check(self) -> set[Key] | None:
        """The workflows changed (None: nothing at all, not even one gone)."""
        touched: set[Key] = set()
        any_news = False
        for root, feed in self._feeds.items():
            try:
                update = feed.poll(0)
            except SourceUnavailable:  # not ours to read: passed over, as ps --all does
                continue
            any_news = any_news or bool(update.removed or update.changed)
            for name in update.removed:
                self._known.pop((root, name), None)
            for entry in update.changed:
                self._known[(root, entry.workflow_id)] = entry
                touched.add((root, entry.workflow_id))
        return touched if any_news else None

    def _update(self, touched: set[Key]) -> DirectoryUpdate:
        self._shown, changed, removed = renamed(self._known, self._shown, touched)
        return DirectoryUpdate(changed, removed, True)

    def pace(self, interval: float) -> float:
        return max([interval, *(feed.pace(interval) for feed in self._feeds.values())])

    def close(self) -> None:
        for feed in self._feeds.values():
            feed.close()
