"""Where traces are: roots from ``--root``, from the writers' registry, and ``roots.add``.

Every writer appends its trace directory to ``$XDG_STATE_HOME/doeff-flow/trace-dirs``
(see ``doeff_flow_core.registry``). flowd re-reads that file whenever its identity,
size or modification time changes (``RegistryWatch.poll``, a ``stat`` every
REGISTRY_POLL seconds), so a workflow started from any directory is indexed within
a second or so with no configuration.

Roots added with ``roots.add`` are kept in ``$XDG_STATE_HOME/doeff-flow/flowd-roots`` (one
absolute path per line, rewritten whole and renamed into place) and added again when
flowd starts, so a restart forgets none of them.
"""

from __future__ import annotations

import os
from typing import Final

from doeff_flow_core.locations import state_dir
from doeff_flow_core.registry import registered_trace_dirs, registry_path

ARGUMENT: Final = "argument"
REGISTRY: Final = "registry"
RPC: Final = "rpc"

REGISTRY_POLL: Final = 0.5
ROOTS_FILE: Final = "flowd-roots"


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
    return str(state_dir() / ROOTS_FILE)


def remembered_roots() -> list[str]:
    """The roots added with ``roots.add`` before (none if the file cannot be read)."""
    try:
        with open(remembered_roots_path(), encoding="utf-8", errors="replace") as handle:
            text = handle.read(1024 * 1024)
    except OSError:
        return []
    found = (line for line in text.split("\n") if line.startswith("/") and "\0" not in line)
    return list(dict.fromkeys(found))


def remember_root(path: str) -> bool:
    """Add ``path`` to the remembered roots; False (and nothing changed) on failure."""
    known = remembered_roots()
    if path in known or "\n" in path:
        return path in known
    target = remembered_roots_path()
    temporary = f"{target}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, "".join(f"{root}\n" for root in [*known, path]).encode())
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError:
        return False
    return True
