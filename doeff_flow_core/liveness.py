"""Deriving ``lost`` and ``unknown``: a running record whose writer is gone is not running."""

from __future__ import annotations

import os
import socket
from functools import cache

from doeff_flow_core.records import LOST, RUNNING, UNKNOWN, LiveTrace


@cache
def this_host() -> str:
    return socket.gethostname()


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if start_ticks is not None:
        current = process_start_ticks(pid)
        if current is not None and current != start_ticks:
            return False  # the pid was reused by another process
    return True


def effective_status(record: LiveTrace) -> str:
    """The status to show: ``lost`` for a running record whose writer died on this host,
    ``unknown`` for a running record written on another host, else the written status."""
    if record.status != RUNNING or record.pid is None:
        return record.status
    if record.host is not None and record.host != this_host():
        return UNKNOWN
    return RUNNING if process_alive(record.pid, record.pid_start) else LOST
