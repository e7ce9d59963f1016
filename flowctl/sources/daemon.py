"""``DaemonSource``: the data-source interface over flowd's socket (docs/protocol.md).

How each call maps onto the protocol:

- ``list_workflows`` / ``workflow_ids``: ``ps`` (``root`` when scoped); each Summary
  becomes the entry the file source makes (flowd's ``status`` where it has one, its
  ``problem`` words otherwise, which are the core's).
- ``history``: ``history`` (``last`` at most HISTORY_MAX); when it holds no record,
  ``get`` says why (no trace file: unknown workflow; no valid record: unreadable).
- ``trace_path``: ``get`` says under which root the workflow lives; its files are then
  read directly (``export`` reads a whole trace, more than ``history`` sends).
- ``follow``: ``history`` for the snapshot, then ``watch`` with ``after`` = its last
  ``{run, step}``: nothing between the two is missed or repeated. After flowd goes away
  the feed reconnects with backoff and watches again with ``after`` = the last record it
  delivered, so a restart skips and repeats nothing.
- ``follow_all``: ``watch`` with no ``workflow_id`` (every new record, pushed) plus
  ``ps`` now and then, for workflows that went away or have no record to push.
- Scope: with a trace directory given (``--trace-dir``, ``$DOEFF_FLOW_TRACE_DIR``),
  ``roots.add`` makes sure flowd indexes it and every call passes it as ``root``; without
  one, every workflow flowd indexes is shown, and an id found under several roots is
  named ``id@root`` (``history``/``watch`` take that name too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from doeff_flow_core import LiveTrace, MalformedRecord, effective_status
from doeff_flow_core.protocol import (
    EMPTY_TRACE,
    GET,
    HISTORY,
    HISTORY_MAX,
    NO_TRACE,
    NO_VALID_RECORDS,
    NOT_A_DIRECTORY,
    PING,
    PS,
    ROOTS_ADD,
    TRACE_NOTIFICATION,
    TRACE_UNREADABLE,
    UNKNOWN_WORKFLOW,
    WATCH,
)
from doeff_flow_core.records import LOST, RUNNING
from doeff_flow_core.registry import owner_refusal, system_refusal
from doeff_flow_core.tracefiles.layout import trace_file
from doeff_flow_core.tracefiles.reading import read_latest
from flowctl.errors import (
    AnswerTooLong,
    DaemonError,
    DaemonUnavailable,
    FlowctlError,
    TraceDirMissing,
    TraceUnreadable,
    WorkflowNotFound,
)
from flowctl.sources.base import (
    DEFAULT_SNAPSHOT,
    DirectoryUpdate,
    FeedUpdate,
    History,
    WorkflowEntry,
    qualified,
    split_name,
    workflow_entry,
)
from flowctl.sources.files import checked_id, existing_trace
from flowctl.sources.rpc import (
    CALL_TIMEOUT,
    Connection,
    Message,
    RpcFailure,
)

PING_TIMEOUT: Final = 3.0  # a socket-activated flowd loads its index before answering
RECONNECT_FIRST: Final = 0.05
RECONNECT_MAX: Final = 2.0
RECONCILE: Final = 2.0  # seconds between two ``ps`` of a directory feed, at least
DUTY_DIVISOR: Final = 50  # ... and at most 1/50 of the time spent on them
# ``after`` meaning "from the first record": no record has a step below 0.
FROM_FIRST: Final = {"run": None, "step": -1}

Key = tuple[str, str]  # (root, workflow_id)
Seen = Callable[[str, object], None]  # told (workflow_id, root) as flowd names them


def _shape(method: str, value: object, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise DaemonError(method, 0, f"unexpected answer: {what} is {type(value).__name__}")
    return value


def parse_records(method: str, items: object) -> list[LiveTrace]:
    try:
        return [LiveTrace.from_dict(item) for item in _shape(method, items, list, "records")]
    except MalformedRecord as exc:
        raise DaemonError(method, 0, f"a record flowd sent is malformed: {exc.reason}") from None


def summary_entry(item: object) -> tuple[Key, WorkflowEntry]:
    """A ``Summary`` (``ps``, ``get``) as an entry, unqualified, with its key."""
    summary = _shape(PS, item, dict, "a summary")
    workflow_id = _shape(PS, summary.get("workflow_id"), str, "workflow_id")
    root = _shape(PS, summary.get("root"), str, "root")
    record, problem, status = summary.get("record"), summary.get("problem"), summary.get("status")
    try:
        latest = None if record is None else LiveTrace.from_dict(record)
    except MalformedRecord as exc:
        latest, problem = None, f"flowd sent a malformed record: {exc.reason}"
    status = status if isinstance(status, str) else None
    problem = problem if isinstance(problem, str) else None
    return (root, workflow_id), workflow_entry(workflow_id, latest, problem, status)


def shown_names(keys: list[Key]) -> dict[Key, str]:
    """Each workflow's name: its id, or ``id@root`` where the id is under several roots."""
    count: dict[str, int] = {}
    for _, workflow_id in keys:
        count[workflow_id] = count.get(workflow_id, 0) + 1
    return {key: key[1] if count[key[1]] == 1 else qualified(key[1], key[0]) for key in keys}


def named(entry: WorkflowEntry, key: Key, name: str) -> WorkflowEntry:
    return entry if name == entry.workflow_id else replace(entry, root=key[0])


def renamed(
    known: dict[Key, WorkflowEntry], shown: dict[Key, str], touched: set[Key]
) -> tuple[dict[Key, str], tuple[WorkflowEntry, ...], tuple[str, ...]]:
    """The names ``known`` workflows go by now, the entries to show again (``touched``, or
    renamed since ``shown``) and the names no longer shown."""
    names = shown_names(sorted(known))
    removed = tuple(name for key, name in shown.items() if names.get(key) != name)
    changed = tuple(
        named(known[key], key, name)
        for key, name in names.items()
        if key in touched or shown.get(key) != name
    )
    return names, changed, removed


def add_root(conn: Connection, root: str, location: str) -> None:
    """Make sure flowd indexes ``root`` (``roots.add`` leaves a root it has alone)."""
    try:
        conn.call(ROOTS_ADD, path=root)
    except RpcFailure as exc:
        if exc.code != NOT_A_DIRECTORY:
            raise
        detail = "is not a directory" if os.path.exists(root) else "does not exist"
        raise TraceDirMissing(location, detail) from None


def refused(root: str) -> str | None:
    """Why flowd would refuse ``root`` (``roots.add``'s rules), or None."""
    real = os.path.realpath(root)
    try:
        return system_refusal(real) or owner_refusal(real, os.geteuid())
    except OSError:
        return None  # not there (yet): flowd says so itself


def subscribe(conn: Connection, **params: Any) -> str | None:
    """``watch``: the subscription id its notifications will carry."""
    result = _shape(WATCH, conn.call(WATCH, **params), dict, "the result")
    subscription = result.get("subscription")
    return subscription if isinstance(subscription, str) else None


def unreadable(workflow_id: str, failure: RpcFailure) -> TraceUnreadable:
    # "cannot read the trace of 'wf' (PATH): Permission denied": the system's words last
    return TraceUnreadable(workflow_id, failure.message.rsplit(": ", 1)[-1], io_error=True)


class DaemonSource:
    """Workflows as flowd indexes them; ``root`` scopes them to one trace directory."""

    kind = "daemon"

    def __init__(
        self,
        socket_path: str,
        root: str | None,
        location: str,
        connection: Connection | None = None,
        pid: int | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.root = root
        self.pid = pid  # flowd's, as ``ping`` said
        self._location = location
        self._conn = connection
        self._root_added = False
        # the root each workflow was last seen under, and the lost records confirmed
        self._roots: dict[str, str] = {}
        self._lost: set[tuple[str, str | None, int]] = set()

    @classmethod
    def connect(cls, socket_path: str, root: str | None, location: str) -> DaemonSource:
        """A source over flowd at ``socket_path`` if it answers ``ping``, else
        DaemonUnavailable; also when ``root`` is a directory flowd refuses to index (a
        system directory, another user's): its files are read directly then."""
        reason = None if root is None else refused(root)
        if reason is not None:
            raise DaemonUnavailable(socket_path, f"does not index {root}: {reason}")
        conn = Connection(socket_path, timeout=PING_TIMEOUT)
        try:
            pong = conn.call(PING)
        except AnswerTooLong:
            raise  # said as it is, not as "not flowd?"
        except FlowctlError as exc:
            conn.close()
            raise DaemonUnavailable(socket_path, f"not flowd? {exc}") from None
        conn.timeout = CALL_TIMEOUT
        pid = pong.get("pid") if isinstance(pong, dict) else None
        return cls(socket_path, root, location, conn, pid if isinstance(pid, int) else None)

    @property
    def location(self) -> str:
        return self._location

    def _scope(self, root: str | None = None) -> dict[str, str]:
        root = root or self.root
        return {} if root is None else {"root": root}

    def _call(self, method: str, **params: Any) -> Any:
        """``method`` on the source's connection; once more on a new one when flowd went
        away since the last call (a restart)."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = Connection(self.socket_path)
                self._root_added = False
            try:
                if self.root is not None and not self._root_added:
                    add_root(self._conn, self.root, self._location)
                    self._root_added = True
                return self._conn.call(method, **params)
            except DaemonUnavailable as exc:
                self._conn.close()
                if attempt == 2 or isinstance(exc, AnswerTooLong):  # would be as long again
                    raise
        raise AssertionError("unreachable")

    def answers(self) -> bool:
        """Whether flowd answers ``ping`` now (on a new connection if it restarted)."""
        try:
            self._call(PING)
        except DaemonUnavailable:
            return False
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _target(self, name: str) -> tuple[str, dict[str, str]]:
        """The workflow id of ``name`` (checked as the file source checks it), and the
        ``root`` param that goes with it."""
        workflow_id, root = split_name(name)
        return checked_id(workflow_id), self._scope(root)

    def entries(self) -> dict[Key, WorkflowEntry]:
        result = _shape(PS, self._call(PS, **self._scope()), dict, "the result")
        return dict(summary_entry(item) for item in _shape(PS, result.get("workflows"), list, ""))

    def list_workflows(self) -> list[WorkflowEntry]:
        entries = self.entries()
        names = shown_names(list(entries))
        return [named(entry, key, names[key]) for key, entry in entries.items()]

    def workflow_ids(self) -> list[str]:
        try:
            return sorted(shown_names(list(self.entries())).values())
        except FlowctlError:
            return []

    def history(self, workflow_id: str, last: int) -> History:
        ident, scope = self._target(workflow_id)
        try:
            result = self._call(HISTORY, workflow_id=ident, last=min(last, HISTORY_MAX), **scope)
        except RpcFailure as exc:
            raise self._failure(ident, exc) from None
        result = _shape(HISTORY, result, dict, "result")
        self._seen(ident, result.get("root"))
        records = parse_records(HISTORY, result.get("records"))
        if not records:
            self._no_records(ident, scope)
        skipped = result.get("skipped", 0)
        skipped = skipped if type(skipped) is int and skipped > 0 else 0
        return History(workflow_id, tuple(records), skipped=skipped)

    def _seen(self, workflow_id: str, root: object) -> None:
        if isinstance(root, str):
            self._roots[workflow_id] = root

    def _no_records(self, workflow_id: str, scope: dict[str, str]) -> None:
        """Why a workflow has no record: raised as the file source raises it."""
        try:
            _, entry = summary_entry(self._call(GET, workflow_id=workflow_id, **scope))
        except RpcFailure as exc:
            raise self._failure(workflow_id, exc) from None
        if entry.latest is not None or entry.problem in (None, EMPTY_TRACE):
            return
        if entry.problem == NO_TRACE:
            raise WorkflowNotFound(workflow_id, self._location)
        if entry.problem == NO_VALID_RECORDS:
            raise TraceUnreadable(workflow_id, NO_VALID_RECORDS)
        raise TraceUnreadable(workflow_id, entry.problem, io_error=True)

    def _failure(self, workflow_id: str, exc: RpcFailure) -> FlowctlError:
        if exc.code == UNKNOWN_WORKFLOW:
            return WorkflowNotFound(workflow_id, self._location)
        if exc.code == TRACE_UNREADABLE:
            return unreadable(workflow_id, exc)
        return exc

    def trace_path(self, workflow_id: str) -> Path:
        ident, scope = self._target(workflow_id)
        try:
            result = _shape(GET, self._call(GET, workflow_id=ident, **scope), dict, "result")
        except RpcFailure as exc:
            raise self._failure(ident, exc) from None
        root = result.get("root")
        if not (isinstance(root, str) and os.path.isabs(root)):
            raise DaemonError(GET, 0, f"no absolute root for {ident!r}")
        self._seen(ident, root)
        path = existing_trace(trace_file(root, ident), root)
        if path is None:
            raise WorkflowNotFound(ident, self._location)
        return path

    def status(self, record: LiveTrace) -> str:
        """The effective status; ``lost`` only once the trace itself ends with ``record``:
        a writer that wrote more and exited is not lost, flowd has not sent the rest yet
        (it is a few milliseconds behind the file, or away while it restarts)."""
        status = effective_status(record)
        key = (record.workflow_id, record.run, record.step)
        if status != LOST or key in self._lost:
            return status
        root = self._roots.get(record.workflow_id, self.root)
        if root is None:
            return status
        try:
            newest = read_latest(trace_file(root, record.workflow_id))
        except (OSError, ValueError):  # unreadable, or an id no trace could have
            newest = None
        if newest is not None and (newest.run, newest.step) != (record.run, record.step):
            return RUNNING
        self._lost.add(key)
        return status

    def follow(
        self,
        workflow_id: str,
        *,
        snapshot: int = DEFAULT_SNAPSHOT,
        every_record: bool = False,
        after: LiveTrace | None = None,
    ) -> DaemonFeed:
        """With ``after`` (the last record another feed delivered) no snapshot: the feed
        watches from just after it."""
        ident, scope = self._target(workflow_id)
        link = Link(self.socket_path, self.root, self._location)
        return DaemonFeed(link, ident, scope, snapshot, self._seen, after)

    def root_of(self, workflow_id: str) -> str | None:
        """The trace directory a workflow (by the name ``follow`` takes) was last seen
        under, else the scope's; None when flowd never said."""
        ident, root = split_name(workflow_id)
        return root or self._roots.get(ident, self.root)

    def follow_all(self) -> DaemonDirectoryFeed:
        link = Link(self.socket_path, self.root, self._location)
        return DaemonDirectoryFeed(link, self._seen)


class Link:
    """A feed's own connection to flowd, made again (with backoff) after flowd goes away.

    ``get`` returns the connection, a new one when one is due (the feed then subscribes
    again), or None while flowd is away. The first connection must succeed
    (DaemonUnavailable otherwise): the source has just spoken to flowd.
    """

    def __init__(self, socket_path: str, root: str | None, location: str) -> None:
        self.socket_path = socket_path
        self.root = root
        self.location = location
        self.root_missing = False
        self._conn: Connection | None = None
        self._delay = RECONNECT_FIRST
        self._retry_at = 0.0
        self._connected_once = False

    @property
    def away(self) -> bool:
        """flowd went away since the link last spoke to it (and has not answered again)."""
        return self._connected_once and self._conn is None

    def get(self) -> Connection | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        try:
            conn = Connection(self.socket_path)
            self.check_root(conn)
        except DaemonUnavailable:
            if not self._connected_once:
                raise
            self.drop()
            return None
        self._conn, self._connected_once = conn, True
        self._delay = RECONNECT_FIRST
        return conn

    def check_root(self, conn: Connection) -> None:
        """``roots.add`` the scope's root; ``root_missing`` while it does not exist (flowd
        finds it through the registry once a workflow writes there)."""
        if self.root is None:
            return
        try:
            add_root(conn, self.root, self.location)
            self.root_missing = False
        except TraceDirMissing:
            self.root_missing = True

    def drop(self) -> None:
        """flowd went away: close, and try again after the backoff delay."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, RECONNECT_MAX)

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, no longer than until the next attempt."""
        time.sleep(max(0.0, min(timeout, self._retry_at - time.monotonic())))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def trace_records(
    messages: list[Message], subscription: str | None
) -> tuple[list[tuple[dict[str, Any], LiveTrace]], int]:
    """The ``(params, record)`` of each ``trace`` notification of ``subscription``, and how
    many of its records were malformed."""
    found: list[tuple[dict[str, Any], LiveTrace]] = []
    bad = 0
    for message in messages:
        params = message.get("params")
        if message.get("method") != TRACE_NOTIFICATION or not isinstance(params, dict):
            continue
        if params.get("subscription") != subscription:
            continue  # a subscription from before
        try:
            found.append((params, LiveTrace.from_dict(params.get("record"))))
        except MalformedRecord:
            bad += 1
    return found, bad


class DaemonFeed:
    """One workflow's records, pushed by a ``watch`` subscription."""

    def __init__(
        self,
        link: Link,
        workflow_id: str,
        scope: dict[str, str],
        snapshot: int,
        seen: Seen,
        after: LiveTrace | None = None,
    ) -> None:
        self._link = link
        self._seen = seen
        self._workflow_id = workflow_id
        self._scope = scope
        self._snapshot = snapshot
        self._subscription: str | None = None
        self._last: LiveTrace | None = after  # the last record delivered
        self._present = after is not None

    @property
    def away(self) -> bool:
        return self._link.away

    def poll(self, timeout: float) -> FeedUpdate:
        deadline = time.monotonic() + timeout
        records: list[LiveTrace] = []
        messages: list[Message] = []
        conn = self._link.get()
        if conn is None:
            self._link.wait(timeout)
            return FeedUpdate(present=self._present)
        try:
            if self._subscription is None:
                records = self._subscribe(conn)
            messages = conn.pushed(0 if records else max(0.0, deadline - time.monotonic()))
        except DaemonUnavailable:
            self._link.drop()
            self._subscription = None
        found, bad = trace_records(messages, self._subscription)
        reset = False
        for params, record in found:
            self._seen(self._workflow_id, params.get("root"))
            last = records[-1] if records else self._last
            if last is not None and record.run == last.run and record.step <= last.step:
                # replaced or truncated: flowd sends the trace again from its first record
                records, reset = [], True
            records.append(record)
        if records:
            self._present = True
            self._last = records[-1]
        return FeedUpdate(tuple(records), self._present, reset, bad)

    def _subscribe(self, conn: Connection) -> list[LiveTrace]:
        """``watch`` again after the last record delivered; the first time, after the last
        records ``history`` gives (returned, as the snapshot)."""
        snapshot: list[LiveTrace] = []
        after: dict[str, Any] | None = None
        if self._last is not None:
            after = {"run": self._last.run, "step": self._last.step}
        else:
            snapshot, after = self._history(conn)
        params: dict[str, Any] = {"workflow_id": self._workflow_id, **self._scope}
        if after is not None:
            params["after"] = after
        self._subscription = subscribe(conn, **params)
        return snapshot

    def _history(self, conn: Connection) -> tuple[list[LiveTrace], dict[str, Any] | None]:
        try:
            result = conn.call(
                "history",
                workflow_id=self._workflow_id,
                last=min(self._snapshot, HISTORY_MAX),
                **self._scope,
            )
        except RpcFailure as exc:
            if exc.code == TRACE_UNREADABLE:
                raise unreadable(self._workflow_id, exc) from None
            if exc.code != UNKNOWN_WORKFLOW:
                raise
            self._present = False
            return [], None  # flowd sends its records once it appears
        result = _shape(HISTORY, result, dict, "result")
        self._seen(self._workflow_id, result.get("root"))
        records = parse_records(HISTORY, result.get("records"))
        if records:
            self._present = True
            return records, {"run": records[-1].run, "step": records[-1].step}
        _, entry = summary_entry(conn.call(GET, workflow_id=self._workflow_id, **self._scope))
        self._present = entry.problem != NO_TRACE  # as a file feed sees it: no file yet
        return [], FROM_FIRST

    def pace(self, interval: float) -> float:
        return interval

    def close(self) -> None:
        self._link.close()


class DaemonDirectoryFeed:
    """Every workflow's latest record: pushed by a ``watch`` of everything, with a ``ps``
    every RECONCILE seconds or more for what a push cannot say (gone, no record)."""

    def __init__(self, link: Link, seen: Seen) -> None:
        self._link = link
        self._seen = seen
        self._scope = {} if link.root is None else {"root": link.root}
        self._subscription: str | None = None
        self._known: dict[Key, WorkflowEntry] = {}
        self._shown: dict[Key, str] = {}
        self._first = True
        self._reconcile_at = 0.0
        self._cost = 0.0

    @property
    def _present(self) -> bool:
        return not self._link.root_missing

    @property
    def away(self) -> bool:
        return self._link.away

    @property
    def roots(self) -> list[str]:
        """The trace directories of the workflows it knows, for a reader of their files."""
        return sorted({root for root, _ in self._known})

    def poll(self, timeout: float) -> DirectoryUpdate:
        deadline = time.monotonic() + timeout
        conn = self._link.get()
        if conn is None:
            self._link.wait(timeout)
            return DirectoryUpdate(present=self._present)
        touched: set[Key] = set()
        try:
            if self._subscription is None:
                self._subscription = subscribe(conn, **self._scope)
                self._reconcile_at = 0.0
            if time.monotonic() >= self._reconcile_at:
                self._apply(conn.pushed(0), touched)
                self._reconcile(conn, touched)
            wait = 0.0 if touched or self._first else max(0.0, deadline - time.monotonic())
            self._apply(conn.pushed(wait), touched)
        except DaemonUnavailable:
            self._link.drop()
            self._subscription = None
        return self._update(touched)

    def _reconcile(self, conn: Connection, touched: set[Key]) -> None:
        started = time.monotonic()
        if self._link.root_missing:
            self._link.check_root(conn)
        result = _shape(PS, conn.call(PS, **self._scope), dict, "result")
        conn.kept()  # pushed before the answer: no newer than it
        fresh = dict(summary_entry(item) for item in _shape(PS, result.get("workflows"), list, ""))
        for key in self._known.keys() - fresh.keys():
            del self._known[key]
        for key, entry in fresh.items():
            if self._known.get(key) != entry:
                self._known[key] = entry
                touched.add(key)
        now = time.monotonic()
        self._cost = now - started
        self._reconcile_at = now + max(RECONCILE, self._cost * DUTY_DIVISOR)

    def _apply(self, messages: list[Message], touched: set[Key]) -> None:
        found, _ = trace_records(messages, self._subscription)
        for params, record in found:
            root, workflow_id = params.get("root"), params.get("workflow_id")
            if not isinstance(root, str) or not isinstance(workflow_id, str):
                continue
            key = (root, workflow_id)
            self._seen(workflow_id, root)
            known = self._known.get(key)
            old = known.latest if known is not None else None
            if old is not None and old.run == record.run and old.step >= record.step:
                continue  # caught up from the file after a newer one was listed
            self._known[key] = workflow_entry(workflow_id, record, None)
            touched.add(key)

    def _update(self, touched: set[Key]) -> DirectoryUpdate:
        self._shown, changed, removed = renamed(self._known, self._shown, touched)
        first, self._first = self._first, False
        if not (changed or removed or first):
            return DirectoryUpdate(present=self._present)
        return DirectoryUpdate(changed, removed, self._present, first)

    def pace(self, interval: float) -> float:
        return interval

    def close(self) -> None:
        self._link.close()
