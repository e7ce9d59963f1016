"""Where traces are: roots from ``--root``, from the writers' registry, and ``roots.add``.

Every writer appends its trace directory to ``$XDG_STATE_HOME/doeff-flow/trace-dirs``
(see ``doeff_flow_core.registry``). flowd re-reads that file whenever its identity,
size or modification time changes (``RegistryWatch.poll``, a ``stat`` every
REGISTRY_POLL seconds), so a workflow started from any directory is indexed within
a second or so with no configuration.

Roots added with ``roots.add`` are kept in ``$XDG_STATE_HOME/doeff-flow/flowd-roots`` (one
absolute path per line) and added again when flowd starts, so a restart forgets none of
them. ``roots.remove`` drops a root from both lists, so it does not come back either. Both
lists are the core's (``doeff_flow_core.registry``: opened safely, changed under a lock).

``refusal`` says which directories are never roots: ``/``, ``/proc``, ``/sys``, ``/dev``
and anything under them, and a directory of another user.
"""

from __future__ import annotations

import os
from typing import Final

from doeff_flow_core.registry import (
    ADDED_ROOTS,
    owner_refusal,
    registered_trace_dirs,
    registry_path,
    system_refusal,
)
from doeff_flow_core.registry import REGISTRY as TRACE_DIRS

ARGUMENT: Final = "argument"
REGISTRY: Final = "registry"
RPC: Final = "rpc"

REGISTRY_POLL: Final = 0.5


def root_path(path: str | os.PathLike[str]) -> str:
    """A root's one name: absolute, symlinks resolved (so one directory is one root)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


class RegistryWatch:
    """The registered trace directories, when they changed since the last look."""

    def __init__(self) -> None:
        self._signature: tuple[int, int, int] | None = None
        self._first = True

    @property
    def path(self) -> str:
        return str(registry_path())

    def poll(self) -> list[str] | None:
        """The registered directories if the registry changed (or on the first call),
        else None."""
        try:
            stat = os.stat(self.path)
            signature: tuple[int, int, int] | None = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = None
        if signature == self._signature and not self._first:
            return None
        self._first = False
        self._signature = signature
        return list(dict.fromkeys(root_path(path) for path in registered_trace_dirs()))


def remembered_roots_path() -> str:
    return str(ADDED_ROOTS.path)


def remembered_roots() -> list[str]:
    """The roots added with ``roots.add`` before (none if the list cannot be read)."""
    return ADDED_ROOTS.read()


def remember_root(path: str) -> bool:
    """Add ``path`` to the remembered roots; False (and nothing changed) on failure."""
    try:
        ADDED_ROOTS.add(path)
    except (OSError, ValueError):
        return False
    return True


def forget_root(path: str) -> list[str]:
    """Drop ``path`` from every list that brings it back when flowd starts (the added
    roots, the writers' registry); the lists' names it was dropped from. OSError when
    one cannot be rewritten."""
    dropped = []
    for paths in (ADDED_ROOTS, TRACE_DIRS):
        if paths.remove(lambda entry: root_path(entry) == path):
            dropped.append(paths.name)
    return dropped


def refusal(path: str) -> str | None:
    """Why ``path`` (a root's name, an existing directory) may not be added, or None."""
    return system_refusal(path) or owner_refusal(path, os.geteuid())
