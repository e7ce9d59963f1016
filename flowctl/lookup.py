"""Finding a workflow from any directory, and every registered trace directory for ``ps --all``.

With no ``--trace-dir`` (nor ``$DOEFF_FLOW_TRACE_DIR``), a workflow id is looked for, in
order: in the default trace directory (``.doeff-flow``), through flowd when it runs (it
indexes every registered directory), then in the directories writers registered
(``doeff_flow_core.registry``) and the roots added to flowd. The first place that has it
is used; two registered directories that both have it are an error naming both. When no
place has it, the default directory is used, as before (``watch`` waits there).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from doeff_flow_core.escape import safe
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.registry import ADDED_ROOTS, REGISTRY
from doeff_flow_core.tracefiles.layout import default_trace_dir
from flowctl import exitcodes
from flowctl.errors import DaemonUnavailable, FlowctlError, SourceUnavailable, TraceDirMissing
from flowctl.options import Request
from flowctl.sources.base import Source, WorkflowEntry, split_name
from flowctl.sources.connect import explicit_trace_dir
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.files import FileSource

# The commands that name one workflow, and so can find it elsewhere.
LOOKS_UP: Final = frozenset({"history", "watch", "export"})


class WorkflowInTwoPlaces(FlowctlError):
    """The id names a workflow in more than one registered trace directory."""

    exit_code = exitcodes.USAGE

    def __init__(self, workflow_id: str, places: Iterable[str]) -> None:
        named = " and ".join(safe(place) for place in places)
        super().__init__(
            f"{workflow_id!r} is in {named}; say which with --trace-dir DIR "
            f"(or {workflow_id}@DIR through flowd)"
        )


def root_name(path: str | os.PathLike[str]) -> str:
    """A directory's one name: absolute, links resolved (as flowd names its roots)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def registered_roots() -> list[str]:
    """Every directory flowd starts from: the writers' registry and the added roots,
    each once, in that order (unreadable lists count as empty)."""
    paths: list[str] = []
    for listing in (REGISTRY, ADDED_ROOTS):
        try:
            paths += listing.read()
        except (OSError, ValueError):
            continue
    return list(dict.fromkeys(root_name(path) for path in paths if os.path.isabs(path)))


def holds(root: str | os.PathLike[str], workflow_id: str) -> bool:
    """Whether ``root`` has a workflow directory ``workflow_id`` (never through a link)."""
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, workflow_id)).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class Found:
    """Where a workflow was found: the source to read it from and, for ``--verbose``,
    how it was found."""

    source: Source
    how: str | None  # None: where it was always looked for


def locate(request: Request, source: Source) -> Found:
    """The source to read ``request``'s workflow from (see the module's docstring)."""
    name = request.workflow_id
    if (
        request.command not in LOOKS_UP
        or name is None
        or explicit_trace_dir(request.options) is not None
        or split_name(name)[1] is not None
        or not is_workflow_id(name)
    ):
        return Found(source, None)
    default = default_trace_dir()
    if holds(default, name):
        return Found(_scoped(source, default), None)
    if source.kind == "daemon" and name in source.workflow_ids():
        return Found(source, f"found {name} through flowd")
    places = [root for root in registered_roots() if holds(root, name)]
    if len(places) > 1:
        raise WorkflowInTwoPlaces(name, places)
    if places:
        return Found(FileSource(places[0]), f"found {name} in {places[0]} (a registered directory)")
    return Found(source, None)


def _scoped(source: Source, trace_dir: Path) -> Source:
    """``source`` narrowed to ``trace_dir``: flowd indexes every registered directory, and
    the same id in another one must not be taken for the one here."""
    if not isinstance(source, DaemonSource) or source.root is not None:
        return source
    try:
        return DaemonSource.connect(source.socket_path, root_name(trace_dir), str(trace_dir))
    except DaemonUnavailable:
        return FileSource(trace_dir)


def find_source(request: Request, source: Source, err: TextIO) -> Source:
    """``locate``'s source; with ``--verbose``, says where the workflow was found."""
    found = locate(request, source)
    if found.how is not None and request.options.verbose:
        print(f"flowctl: {safe(found.how)}", file=err)
    return found.source


def list_every_root() -> list[WorkflowEntry]:
    """``ps --all`` from the files: the workflows of the default trace directory and of
    every registered one, an id found under two roots named ``id@root`` (as flowd
    names it); directories that are gone are passed over."""
    roots = [root_name(default_trace_dir()), *registered_roots()]
    listed: list[tuple[str, WorkflowEntry]] = []
    for root in dict.fromkeys(roots):
        try:
            listed += [(root, entry) for entry in FileSource(root).list_workflows()]
        except (TraceDirMissing, SourceUnavailable):
            continue  # gone since it was registered, or not ours to read
    count: dict[str, int] = {}
    for _, entry in listed:
        count[entry.workflow_id] = count.get(entry.workflow_id, 0) + 1
    entries = [
        WorkflowEntry(e.workflow_id, e.latest, e.status, e.problem, root)
        if count[e.workflow_id] > 1
        else e
        for root, e in listed
    ]
    return sorted(entries, key=lambda entry: (entry.workflow_id, entry.root or ""))
