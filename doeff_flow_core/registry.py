"""The registry of trace directories writers used, so flowd finds them without configuration.

One absolute path per line in ``$XDG_STATE_HOME/doeff-flow/trace-dirs``. Registering is
best effort: a workflow is never hurt because the registry cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path

from doeff_flow_core.locations import state_dir

REGISTRY_NAME = "trace-dirs"


def registry_path() -> Path:
    return state_dir() / REGISTRY_NAME


def registered_trace_dirs() -> list[Path]:
    try:
        text = registry_path().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    seen: dict[str, None] = {}
    for line in text.split("\n"):
        if line.startswith("/"):
            seen.setdefault(line, None)
    return [Path(p) for p in seen]


def register_trace_dir(trace_dir: Path) -> bool:
    """Add ``trace_dir`` (absolute) to the registry unless it is there; True if it is now."""
    entry = str(trace_dir.resolve())
    if "\n" in entry:
        return False
    try:
        if Path(entry) in registered_trace_dirs():
            return True
        path = registry_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (entry + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        return False
    return True
