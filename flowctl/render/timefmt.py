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


def _figures(value: float) -> str:
    """About three significant figures, never an exponent: ``413``, ``2.41``, ``12.5``."""
    digits = 0 if value >= 99.5 else 1 if value >= 9.95 else 2
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def duration(seconds: float) -> str:
    """A span of time at a precision that suits it: ``850 µs``, ``413 ms``, ``2.41 s``,
    ``3 min 05 s``, ``2 h 04 min``."""
    if seconds < 0.001:
        return f"{max(seconds, 0) * 1e6:.0f} µs"
    if seconds < 1:
        return f"{_figures(seconds * 1000)} ms"
    if seconds < 60:
        return f"{_figures(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
