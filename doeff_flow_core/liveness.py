"""Deriving ``lost`` and ``unknown``: a running record whose writer is gone is not running."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import cache

from doeff_flow_core.records import LOST, RUNNING, UNKNOWN, LiveTrace


@cache
def this_host() -> str:
    return socket.gethostname()


def _proc_stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onwards of /proc/PID/stat (state first), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None where unavailable."""
    fields = _proc_stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` still runs the process that started at ``start_ticks``.

    A zombie (exited, not yet reaped by its parent) is not alive; nor is a pid no process
    can have (0 and below would signal process groups; a huge one overflows).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except (OSError, OverflowError):
        return False
    fields = _proc_stat_fields(pid)
    if not fields:
        return True  # no /proc: the signal check is all there is
    if fields[0] == b"Z":
        return False
    # A different start time: the pid was reused by another process.
    return start_ticks is None or len(fields) <= 19 or fields[19] == str(start_ticks).encode()


def derive_status(
    status: str,
    pid: int | None,
    host: str | None,
    pid_start: int | None,
    alive: Callable[[int, int | None], bool] = process_alive,
) -> str:
    """The status to show: ``lost`` for a running record whose writer died on this host,
    ``unknown`` for a running record written on another host, else the written status.

    ``alive(pid, pid_start)`` is asked only for a running record of this host; callers
    answering many records at once pass a caching one.
    """
    if status != RUNNING or pid is None:
        return status
    if host is not None and host != this_host():
        return UNKNOWN
    return RUNNING if alive(pid, pid_start) else LOST


def effective_status(record: LiveTrace) -> str:
    """``derive_status`` of a record."""
    return derive_status(record.status, record.pid, record.host, record.pid_start)
