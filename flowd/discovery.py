"""Where traces are: roots from ``--root``, from the writers' registry, and ``roots.add``.

Every writer appends its trace directory to ``$XDG_STATE_HOME/doeff-flow/trace-dirs``
(see ``doeff_flow_core.registry``). flowd re-reads that file whenever its identity,
size or modification time changes (``RegistryWatch.poll``, a ``stat`` every
REGISTRY_POLL seconds), so a workflow started from any directory is indexed within
a second or so with no configuration.
"""

from __future__ import annotations

import os
from typing import Final

from doeff_flow_core.registry import registered_trace_dirs, registry_path

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
