"""Where traces live: ``<trace_dir>/<workflow_id>/trace.jsonl``."""

from __future__ import annotations

import os
from pathlib import Path

from doeff_flow_core.ids import validate_workflow_id

TRACE_DIR_ENV = "DOEFF_FLOW_TRACE_DIR"
DEFAULT_TRACE_DIR = ".doeff-flow"
TRACE_FILE_NAME = "trace.jsonl"
LOCK_FILE_NAME = "writer.lock"


def default_trace_dir() -> Path:
    """``$DOEFF_FLOW_TRACE_DIR`` if set, else ``.doeff-flow`` in the current directory."""
    return Path(os.environ.get(TRACE_DIR_ENV) or DEFAULT_TRACE_DIR)


def resolve_trace_dir(trace_dir: str | os.PathLike[str] | None) -> Path:
    return default_trace_dir() if trace_dir is None else Path(trace_dir)


def workflow_dir(trace_dir: str | os.PathLike[str] | None, workflow_id: str) -> Path:
    return resolve_trace_dir(trace_dir) / validate_workflow_id(workflow_id)


def trace_file(trace_dir: str | os.PathLike[str] | None, workflow_id: str) -> Path:
    return workflow_dir(trace_dir, workflow_id) / TRACE_FILE_NAME


def rotated_path(path: Path, index: int) -> Path:
    """``trace.jsonl.<index>``: the ``index``-th newest rotated part of ``path``."""
    return path.with_name(f"{path.name}.{index}")


def state_dir() -> Path:
    """``$XDG_STATE_HOME/doeff-flow`` (default ``~/.local/state/doeff-flow``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "doeff-flow"


SOCKET_ENV = "DOEFF_FLOW_SOCKET"


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
