"""Where doeff-flow keeps its own state and where flowd listens (trace files: ``tracefiles``).

``check_socket_dir`` is the one test of the socket's directory that flowd (before it
binds) and flowctl (before it connects) both make: another user who could make or swap
that directory could answer in flowd's place, or choose where flowd creates its files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from doeff_flow_core.errors import UnsafeSocketDir

SOCKET_ENV: Final = "DOEFF_FLOW_SOCKET"


def state_dir() -> Path:
    """``$XDG_STATE_HOME/doeff-flow`` (default ``~/.local/state/doeff-flow``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "doeff-flow"


def default_socket_path() -> Path:
    """flowd's socket: ``$DOEFF_FLOW_SOCKET``, else ``$XDG_RUNTIME_DIR/doeff-flow/flowd.sock``,
    else ``/tmp/doeff-flow-$UID/flowd.sock``."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "doeff-flow" / "flowd.sock"
    return Path(f"/tmp/doeff-flow-{os.getuid()}") / "flowd.sock"


def check_socket_dir(directory: str | os.PathLike[str], uid: int) -> os.stat_result:
    """The ``lstat`` of ``directory`` when it is a real directory (not a symbolic link)
    owned by ``uid`` with no permission for group or others; UnsafeSocketDir naming the
    first reason it is not. A directory that cannot be looked at raises the OSError."""
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSocketDir(directory, "a symbolic link (not followed)")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeSocketDir(directory, "not a directory")
    if info.st_uid != uid:
        raise UnsafeSocketDir(directory, f"owned by uid {info.st_uid}, not {uid}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise UnsafeSocketDir(directory, f"mode {mode:04o}, open to group or others (want 0700)")
    return info
