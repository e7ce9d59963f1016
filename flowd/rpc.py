"""The RPC interface: the methods clients may call, over the daemon's state.

``RpcInterface`` is testable without a socket: give it a ``Daemon`` and a client (an
outbox and a way to start tasks) and feed it request lines. The methods a client can
reach are the ones in its explicit table; nothing is looked up by name otherwise.
"""

from __future__ import annotations

import array
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from json.encoder import encode_basestring_ascii
from typing import Any, Final, Protocol

import anyio.lowlevel
import anyio.to_thread

from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.protocol import (
    GET,
    HISTORY,
    HISTORY_DEFAULT,
    HISTORY_MAX,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_WATCHES,
    MAX_WATCHES_TOTAL,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PING,
    PS,
    ROOTS_ADD,
    ROOTS_LIST,
    ROOTS_REMOVE,
    STATS,
    UNWATCH,
    WATCH,
)
from doeff_flow_core.records import ALL_STATUSES
from doeff_flow_core.registry import system_refusal
from flowd.daemon import Daemon
from flowd.discovery import refusal, root_path
from flowd.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotADirectory,
    ParseError,
    RootRefused,
    RootsUnwritable,
    RpcError,
    TooManyWatches,
    TraceUnreadable,
    UnknownRoot,
    UnknownSubscription,
    UnknownWorkflow,
)
from flowd.index import Entry, Liveness, history
from flowd.jsonrpc import RawJson, error_message, parse_request, result_message
from flowd.otlp.exporter import Exporter
from flowd.subscriptions import After, Subscriber, Subscription

log = logging.getLogger("flowd")

WARN_EVERY: Final = 10.0  # seconds between two warnings of watches refused
PS_SLICE: Final = 5000  # summaries built between two turns of the event loop
# Errors a client made (logged as warnings); the others are answers, not incidents.
CLIENT_MISTAKES: Final = (PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS)


@functools.cache
def version() -> str:
    try:
        return metadata.version("doeff-flow")
    except metadata.PackageNotFoundError:
        return "unknown"


class Client(Subscriber, Protocol):
    """A connection as the RPC interface sees it."""

    @property
    def name(self) -> str: ...

    @property
    def subscriptions(self) -> dict[str, Subscription]: ...


@dataclass
class RpcCall:
    """One request being answered: its client, its params, and what to do once the
    response is queued."""

    client: Client
    params: dict[str, Any] | list[Any]
    then: list[Callable[[], None]] = field(default_factory=list)


Method = Callable[[RpcCall], Awaitable[Any]]


class Params:
    """Checks named params; every failure is InvalidParams saying which and why."""

    def __init__(self, call: RpcCall, *allowed: str) -> None:
        if not isinstance(call.params, dict):
            raise InvalidParams("params must be an object (named parameters)")
        unknown = sorted(set(call.params) - set(allowed))
        if unknown:
            raise InvalidParams(f"unknown parameter {unknown[0][:100]!r}")
        self._values = call.params

    def workflow_id(self, required: bool) -> str | None:
        value = self._values.get("workflow_id")
        if value is None and not required:
            return None
        if value is None:
            raise InvalidParams("workflow_id is required")
        if not isinstance(value, str) or not is_workflow_id(value):
            raise InvalidParams("workflow_id must be 1-255 characters of A-Z a-z 0-9 _ -")
        return value

    def path(self, name: str, required: bool) -> str | None:
        value = self._values.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.startswith("/") or not _encodable(value):
            raise InvalidParams(f"{name} must be an absolute path")
        return root_path(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._values.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidParams(f"{name} must be an integer from {low} to {high}")
        return value

    def statuses(self) -> frozenset[str] | None:
        value = self._values.get("status")
        if value is None:
            return None
        wanted = [value] if isinstance(value, str) else value
        if not isinstance(wanted, list) or not all(s in ALL_STATUSES for s in wanted):
            raise InvalidParams(f"status must be one of {', '.join(ALL_STATUSES)}, or a list")
        return frozenset(wanted)

    def after(self) -> After | None:
        value = self._values.get("after")
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) - {"run", "step"}:
            raise InvalidParams('after must be {"run": ..., "step": ...}')
        run, step = value.get("run"), value.get("step")
        if not isinstance(run, str | None) or not isinstance(step, int) or isinstance(step, bool):
            raise InvalidParams("after.run must be a string (or null), after.step an integer")
        return run, step

    def subscription(self) -> str:
        value = self._values.get("subscription")
        if not isinstance(value, str):
            raise InvalidParams("subscription must be a string")
        return value


class RpcInterface:
    def __init__(self, daemon: Daemon, otlp: Exporter | None = None) -> None:
        self._daemon = daemon
        self._otlp = otlp
        # Counters that a flood moves are kept where changing them makes no Python object:
        # one made during a flood and kept after it would pin an arena of the flood's
        # memory. Subscription ids come from a count; refusals' warnings from an array.
        self._idents = itertools.count(1)
        self._warning = array.array("d", [-WARN_EVERY, 0])  # last logged (monotonic), refused since
        self._methods: dict[str, Method] = {
            PING: self.ping,
            PS: self.ps,
            GET: self.get,
            HISTORY: self.history,
            WATCH: self.watch,
            UNWATCH: self.unwatch,
            ROOTS_LIST: self.roots_list,
            ROOTS_ADD: self.roots_add,
            ROOTS_REMOVE: self.roots_remove,
            STATS: self.stats,
        }

    async def handle_line(self, client: Client, line: bytes) -> None:
        """Answer one request line: its response (if it wants one) goes to the outbox."""
        if not line.strip():
            return
        ident = None
        notification = False
        call: RpcCall | None = None
        try:
            request = parse_request(line)
            ident, notification = request.id, request.notification
            method = self._methods.get(request.method)
            if method is None:
                raise MethodNotFound(request.method)
            call = RpcCall(client, request.params)
            result = await method(call)
        except RpcError as error:
            if error.code in CLIENT_MISTAKES:
                log.warning("%s: %s", client.name, error.message)
            else:
                log.debug("%s: %s", client.name, error.message)
            if isinstance(error, InvalidRequest | ParseError):
                ident, notification = error.request_id, False
            if not notification:
                client.outbox.put(error_message(ident, error))
            return
        except Exception as exc:
            log.error("%s: internal error: %s: %s", client.name, type(exc).__name__, exc)
            log.debug("internal error", exc_info=True)
            if not notification:
                client.outbox.put(error_message(ident, InternalError(exc)))
            return
        if not notification:
            client.outbox.put(result_message(ident, result))
        for action in call.then:
            action()

    # -- methods ----------------------------------------------------------------------

    async def ping(self, call: RpcCall) -> Any:
        Params(call)
        daemon = self._daemon
        answer: dict[str, Any] = {
            "version": version(),
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - daemon.started, 3),
            "workflows": len(daemon.index),
            "roots": len(daemon.index.roots),
        }
        if self._otlp is not None:  # only when exporting is configured
            answer["otlp"] = self._otlp.stats()
        return answer

    async def ps(self, call: RpcCall) -> Any:
        params = Params(call, "status", "root")
        wanted = params.statuses()
        root = params.path("root", required=False)
        liveness = Liveness()
        entries = sorted(
            (e for e in self._daemon.index.entries() if root is None or e.root == root),
            key=lambda entry: (entry.workflow_id, entry.root),
        )
        out = bytearray(b'{"workflows":[')
        first = True
        for count, entry in enumerate(entries, 1):
            status = liveness.status(entry.latest) if entry.latest is not None else None
            if wanted is None or status in wanted:
                if not first:
                    out += b","
                summary_into(out, entry, status)
                first = False
            if count % PS_SLICE == 0:
                await anyio.lowlevel.checkpoint()  # others are answered meanwhile
        out += b"]}"
        return RawJson(bytes(out))

    async def get(self, call: RpcCall) -> Any:
        entry = self._entry(Params(call, "workflow_id", "root"))
        status = Liveness().status(entry.latest) if entry.latest is not None else None
        return RawJson(summary(entry, status))

    async def history(self, call: RpcCall) -> Any:
        params = Params(call, "workflow_id", "last", "root")
        last = params.integer("last", HISTORY_DEFAULT, 1, HISTORY_MAX)
        entry = self._entry(params)
        skipped = 0
        try:
            tail = await anyio.to_thread.run_sync(
                history, entry.root, entry.workflow_id, last, entry.position
            )
            records = [RawJson(line.raw) for line in tail.items]
            skipped = tail.skipped
        except FileNotFoundError:
            records = []
        except OSError as exc:
            raise TraceUnreadable(entry.workflow_id, entry.path, exc) from None
        return {
            "workflow_id": entry.workflow_id,
            "root": entry.root,
            "records": records,
            "skipped": skipped,
        }

    async def watch(self, call: RpcCall) -> Any:
        """``workflow_id?``, ``root?``, ``after?``: ``{"subscription"}``, then ``trace``
        notifications. A connection holds at most MAX_WATCHES subscriptions and flowd
        MAX_WATCHES_TOTAL; past either, TOO_MANY_WATCHES (``data``: ``{"limit",
        "scope"}``, ``scope`` ``connection`` or ``flowd``), and the connection goes on."""
        # refused before anything is made for it
        if len(call.client.subscriptions) >= MAX_WATCHES:
            self._over_cap(call.client, MAX_WATCHES, TooManyWatches.CONNECTION)
            raise TooManyWatches(MAX_WATCHES, TooManyWatches.CONNECTION)
        if self._daemon.hub.live >= MAX_WATCHES_TOTAL:
            self._over_cap(call.client, MAX_WATCHES_TOTAL, TooManyWatches.FLOWD)
            raise TooManyWatches(MAX_WATCHES_TOTAL, TooManyWatches.FLOWD)
        params = Params(call, "workflow_id", "root", "after")
        workflow_id = params.workflow_id(required=False)
        root = params.path("root", required=False)
        after = params.after()
        if after is not None and workflow_id is None:
            raise InvalidParams("after needs a workflow_id")
        ident = f"s{next(self._idents)}"
        sub = Subscription(ident, call.client, workflow_id, root, after)
        call.client.subscriptions[ident] = sub
        call.then.append(lambda: self._daemon.hub.start(sub))
        return {"subscription": ident}

    def _over_cap(self, client: Client, limit: int, scope: str) -> None:
        """A warning at most every WARN_EVERY seconds (a flood logs a line, not a line per
        request; and nothing is kept per connection for it)."""
        warning = self._warning
        warning[1] += 1
        if time.monotonic() - warning[0] >= WARN_EVERY:
            log.warning(
                "%s: %d watches open (%s's limit); refusing more (%d refused)",
                client.name,
                limit,
                scope,
                warning[1],
            )
            warning[0] = time.monotonic()
            warning[1] = 0

    async def unwatch(self, call: RpcCall) -> Any:
        ident = Params(call, "subscription").subscription()
        sub = call.client.subscriptions.pop(ident, None)
        if sub is None:
            raise UnknownSubscription(ident)
        self._daemon.hub.stop(sub)
        return {"unwatched": True}

    async def roots_list(self, call: RpcCall) -> Any:
        """``{"roots": [{"path", "origin", "workflows", "exists", "watch"}]}``: ``exists``
        whether the directory is there now (a missing one is looked for every few
        seconds), ``watch`` how changes are noticed (``inotify`` or ``poll``)."""
        Params(call)
        return {
            "roots": [
                {
                    "path": root.path,
                    "origin": root.origin,
                    "workflows": len(root.entries),
                    "exists": root.present,
                    "watch": "inotify" if root.track.watch >= 0 else "poll",
                }
                for root in self._daemon.index.roots.values()
            ]
        }

    async def roots_add(self, call: RpcCall) -> Any:
        """``path`` (an absolute directory) indexed and remembered for the next start:
        ``{"path", "added", "workflows"}`` (``added`` false when it was a root already).
        Refused (``ROOT_REFUSED``, ``data.reason``): ``/``, ``/proc``, ``/sys``, ``/dev``
        and anything under them, and a directory flowd's user does not own."""
        path = Params(call, "path").path("path", required=True)
        assert path is not None
        reason = system_refusal(path)
        if reason is not None:
            raise RootRefused(path, reason)
        if not os.path.isdir(path):
            detail = "not a directory" if os.path.exists(path) else "no such directory"
            raise NotADirectory(path, detail)
        try:
            reason = refusal(path)
        except OSError as exc:
            raise NotADirectory(path, exc.strerror or str(exc)) from None
        if reason is not None:
            raise RootRefused(path, reason)
        added = await self._daemon.add_rpc_root(path)
        root = self._daemon.index.roots.get(path)
        return {"path": path, "added": added, "workflows": 0 if root is None else len(root.entries)}

    async def roots_remove(self, call: RpcCall) -> Any:
        """``path``: a root (given with ``--root``, registered, or added) no longer indexed
        (its workflows leave the index and lose their watches) and dropped from the lists
        that bring it back at the next start (``flowd-roots``, ``trace-dirs``; a
        ``--root`` comes back with its argument). ``{"path", "removed": true, "origin",
        "workflows", "lists"}``: ``origin`` as ``roots.list`` said it (null: only listed),
        ``workflows`` those dropped, ``lists`` the lists it left. ``UNKNOWN_ROOT`` when it
        is neither indexed nor listed."""
        path = Params(call, "path").path("path", required=True)
        assert path is not None
        try:
            forgotten = await self._daemon.forget_rpc_root(path)
        except OSError as exc:
            raise RootsUnwritable(path, exc) from None
        if forgotten is None:
            raise UnknownRoot(path)
        return {
            "path": path,
            "removed": True,
            "origin": forgotten.origin,
            "workflows": forgotten.workflows,
            "lists": list(forgotten.lists),
        }

    async def stats(self, call: RpcCall) -> Any:
        Params(call)
        return {"otlp": None if self._otlp is None else self._otlp.stats()}

    def _entry(self, params: Params) -> Entry:
        workflow_id = params.workflow_id(required=True)
        assert workflow_id is not None
        root = params.path("root", required=False)
        entry = self._daemon.index.resolve(workflow_id, root)
        if entry is None:
            raise UnknownWorkflow(workflow_id, root)
        return entry


def summary(entry: Entry, status: str | None) -> bytes:
    """``{"workflow_id", "root", "status", "record", "problem"}`` as JSON, the record
    spliced in as stored."""
    out = bytearray()
    summary_into(out, entry, status)
    return bytes(out)


def summary_into(out: bytearray, entry: Entry, status: str | None) -> None:
    """``summary`` appended to ``out``: ``ps`` writes 100,000 of them into one buffer,
    with no object per workflow (they would stay in the heap's fragments afterwards)."""
    latest = entry.latest
    out += b'{"workflow_id":'
    out += _json_string(entry.workflow_id)
    out += b',"root":'
    out += _json_string(entry.root)
    out += b',"status":'
    out += b"null" if status is None else _json_string(status)
    out += b',"record":'
    out += b"null" if latest is None else latest.raw
    out += b',"problem":'
    out += b"null" if entry.problem is None else _json_string(entry.problem)
    out += b"}"


def _json_string(text: str) -> bytes:
    return encode_basestring_ascii(text).encode("ascii")


def _encodable(path: str) -> bool:
    """A path the system can be asked about: no NUL, no lone surrogate (``"\\ud800"``)."""
    if "\0" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
