"""``flowctl roots [list | add DIR | remove DIR]``: the trace directories flowd indexes.

With flowd running, each action is flowd's: ``roots.list`` (each root's workflows,
whether it exists and how it is watched), ``roots.add``, ``roots.remove``. Without it,
the lists flowd reads when it starts are read and changed directly
(``doeff_flow_core.registry``: ``trace-dirs``, which writers fill, and ``flowd-roots``):
``add`` remembers a directory for flowd's next start, ``remove`` drops it from both, with
the same refusals flowd makes (``/``, ``/proc``, ``/sys``, ``/dev`` and under them,
another user's directory).

Listing forgets the registered directories that no longer exist (in the registry file,
whether flowd runs or not; flowd drops them from its index within a second).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Final

from doeff_flow_core.escape import safe
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.protocol import (
    NOT_A_DIRECTORY,
    ROOT_REFUSED,
    ROOTS_ADD,
    ROOTS_LIST,
    ROOTS_REMOVE,
    UNKNOWN_ROOT,
)
from doeff_flow_core.registry import (
    ADDED_ROOTS,
    REGISTRY,
    forget_missing,
    missing,
    owner_refusal,
    system_refusal,
)
from flowctl import exitcodes
from flowctl.console import Console
from flowctl.errors import FlowctlError, UsageError
from flowctl.options import ROOTS_ACTIONS, Request
from flowctl.sources.base import Source
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.rpc import Connection, RpcFailure

LIST, ADD, REMOVE = ROOTS_ACTIONS
# The origins' words, as flowd's ``roots.list`` gives them.
REGISTERED: Final = "registry"
ADDED: Final = "rpc"


class RootRefused(FlowctlError):
    """A directory that may not be a root (a system directory, another user's)."""

    exit_code = exitcodes.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RootMissing(FlowctlError):
    """``add``: no such directory; ``remove``: not a root."""

    exit_code = exitcodes.NOT_FOUND

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RootsUnwritable(FlowctlError):
    """The state directory's lists cannot be changed (permissions, not the user's)."""

    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(f"cannot change {path}: {error.strerror or error}")


@dataclass(frozen=True)
class RootRow:
    """One root as listed: ``workflows`` None when not counted, ``watch`` None without
    flowd."""

    path: str
    origin: str
    workflows: int | None
    exists: bool
    watch: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "origin": self.origin,
            "workflows": self.workflows,
            "exists": self.exists,
            "watch": self.watch,
        }


def run_roots(console: Console, request: Request, source: Source) -> int:
    action = request.action or LIST
    daemon = source if isinstance(source, DaemonSource) else None
    if action == LIST:
        if request.directory is not None:
            raise UsageError("roots list takes no DIR (roots add DIR, roots remove DIR)")
        return _list(console, request, daemon)
    if request.directory is None:
        raise UsageError(f"roots {action} needs a DIR")
    path = os.path.abspath(request.directory)
    if daemon is not None:
        with Connection(daemon.socket_path) as conn:
            line = (_add_through if action == ADD else _remove_through)(conn, path)
    else:
        line = (_add_to_lists if action == ADD else _remove_from_lists)(path)
    console.out.write(safe(line) + "\n")
    console.out.flush()
    return exitcodes.OK


# -- list -------------------------------------------------------------------------------


def _list(console: Console, request: Request, daemon: DaemonSource | None) -> int:
    try:
        forgotten = forget_missing()
    except OSError as exc:
        forgotten = []
        print(f"flowctl: {safe(str(RootsUnwritable(str(REGISTRY.path), exc)))}", file=console.err)
    if daemon is not None:
        with Connection(daemon.socket_path) as conn:
            rows = [
                row
                for row in _rows_of(conn.call(ROOTS_LIST))
                if not (row.origin == REGISTERED and row.path in forgotten)
            ]
        where = f"flowd (pid {daemon.pid}) at {daemon.socket_path}"
    else:
        rows = _rows_from_lists()
        where = f"{REGISTRY.path} and {ADDED_ROOTS.path} (flowd is not running)"
    if request.options.json:
        answer: dict[str, Any] = {
            "source": "flowd" if daemon is not None else "files",
            "roots": [row.as_json() for row in rows],
            "forgotten": forgotten,
        }
        if daemon is not None:
            answer.update(pid=daemon.pid, socket=daemon.socket_path)
        else:
            answer["read_from"] = [str(REGISTRY.path), str(ADDED_ROOTS.path)]
        console.out.write(json.dumps(answer) + "\n")
    else:
        console.out.write("".join(safe(line) + "\n" for line in _lines(rows, where, forgotten)))
    console.out.flush()
    return exitcodes.OK


def _rows_of(answer: object) -> list[RootRow]:
    items = answer.get("roots") if isinstance(answer, dict) else None
    rows = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        workflows = item.get("workflows")
        watch = item.get("watch")
        rows.append(
            RootRow(
                item["path"],
                str(item.get("origin")),
                workflows if isinstance(workflows, int) else None,
                item.get("exists") is not False,
                watch if isinstance(watch, str) else None,
            )
        )
    return rows


def _rows_from_lists() -> list[RootRow]:
    rows: list[RootRow] = []
    seen: set[str] = set()
    for origin, paths in ((REGISTERED, REGISTRY), (ADDED, ADDED_ROOTS)):
        for path in paths.read():
            if path in seen:
                continue
            seen.add(path)
            gone = missing(path)
            rows.append(RootRow(path, origin, None if gone else _count(path), not gone, None))
    return rows


def _count(path: str) -> int | None:
    """The workflow directories under ``path`` (None when it cannot be listed)."""
    try:
        with os.scandir(path) as entries:
            return sum(
                1
                for entry in entries
                if is_workflow_id(entry.name) and entry.is_dir(follow_symlinks=False)
            )
    except OSError:
        return None


def _lines(rows: list[RootRow], where: str, forgotten: list[str]) -> list[str]:
    if rows:
        lines = [f"{len(rows)} root{'' if len(rows) == 1 else 's'}, from {where}:"]
        lines.append(f"{'WORKFLOWS':>9}  {'ORIGIN':<8}  {'STATE':<8}  PATH")
        for row in rows:
            count = "-" if row.workflows is None else str(row.workflows)
            state = "missing" if not row.exists else (row.watch or "exists")
            lines.append(f"{count:>9}  {row.origin:<8}  {state:<8}  {row.path}")
    else:
        lines = [f"no roots, from {where}"]
    if forgotten:
        lines.append(
            f"forgot {len(forgotten)} registered director{'y' if len(forgotten) == 1 else 'ies'}"
            f" that no longer exist{'s' if len(forgotten) == 1 else ''}: {', '.join(forgotten)}"
        )
    return lines


# -- add, remove ------------------------------------------------------------------------


def _add_through(conn: Connection, path: str) -> str:
    try:
        answer = conn.call(ROOTS_ADD, path=path)
    except RpcFailure as exc:
        raise _failure(exc) from None
    shown, workflows = _path_and_count(answer, path)
    if isinstance(answer, dict) and answer.get("added") is False:
        return f"{shown} is a root already ({workflows})"
    return f"added {shown} ({workflows})"


def _remove_through(conn: Connection, path: str) -> str:
    try:
        answer = conn.call(ROOTS_REMOVE, path=path)
    except RpcFailure as exc:
        raise _failure(exc) from None
    shown, workflows = _path_and_count(answer, path)
    lists = answer.get("lists") if isinstance(answer, dict) else None
    dropped = f"; dropped from {', '.join(map(str, lists))}" if lists else ""
    origin = answer.get("origin") if isinstance(answer, dict) else None
    back = "; it comes back when flowd starts with --root again" if origin == "argument" else ""
    return f"removed {shown} ({workflows} no longer indexed{dropped}{back})"


def _path_and_count(answer: object, path: str) -> tuple[str, str]:
    shown = answer.get("path") if isinstance(answer, dict) else None
    count = answer.get("workflows") if isinstance(answer, dict) else None
    workflows = f"{count} workflow{'' if count == 1 else 's'}" if isinstance(count, int) else "?"
    return (shown if isinstance(shown, str) else path), workflows


def _failure(exc: RpcFailure) -> FlowctlError:
    if exc.code == ROOT_REFUSED:
        return RootRefused(exc.message)
    if exc.code in (NOT_A_DIRECTORY, UNKNOWN_ROOT):
        return RootMissing(exc.message)
    return exc


def _add_to_lists(path: str) -> str:
    real = os.path.realpath(path)
    reason = system_refusal(real)
    if reason is None:
        if not os.path.isdir(real):
            detail = "not a directory" if os.path.exists(real) else "no such directory"
            raise RootMissing(f"{real}: {detail}")
        try:
            reason = owner_refusal(real, os.geteuid())
        except OSError as exc:
            raise RootMissing(f"{real}: {exc.strerror or exc}") from None
    if reason is not None:
        raise RootRefused(f"{real}: refused: {reason}")
    try:
        added = ADDED_ROOTS.add(real)
    except OSError as exc:
        raise RootsUnwritable(str(ADDED_ROOTS.path), exc) from None
    if not added:
        return f"{real} is in {ADDED_ROOTS.path} already (flowd is not running)"
    return f"added {real} to {ADDED_ROOTS.path}; flowd indexes it when it starts"


def _remove_from_lists(path: str) -> str:
    real = os.path.realpath(path)
    dropped = []
    for paths in (ADDED_ROOTS, REGISTRY):
        try:
            if paths.remove(lambda entry: os.path.realpath(entry) == real):
                dropped.append(str(paths.path))
        except OSError as exc:
            raise RootsUnwritable(str(paths.path), exc) from None
    if not dropped:
        raise RootMissing(f"{real}: not a root (not registered nor added; flowd is not running)")
    return f"removed {real} from {' and '.join(dropped)} (flowd is not running)"
