"""Where doeff-flow keeps its own state and where flowd listens (trace files: ``tracefiles``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

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
