"""Times as people read them: ``12:00:00.123`` and ages such as ``4m05s``."""

from __future__ import annotations

from datetime import datetime


def clock(moment: datetime) -> str:
    """Local wall-clock time with milliseconds: ``12:00:00.123``."""
    local = moment.astimezone()
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def age(seconds: float) -> str:
    """A duration in at most two units: ``12s``, ``4m05s``, ``3h04m``, ``2d03h``."""
    total = max(int(seconds), 0)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def seconds_between(earlier: datetime, later: datetime) -> float:
    return (later - earlier).total_seconds()
