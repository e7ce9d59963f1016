"""Ticks for a time axis that starts at 0: round steps and labels people read at a glance
(``250 ms``, ``1.5 s``, ``2 min 30 s``, ``1 h``)."""

from __future__ import annotations

import math
from typing import Final

# Steps of a second and longer follow the clock (15 s, 30 s, 5 min) rather than 1-2-5.
_CLOCK_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)
_HOUR: Final = 3600


def tick_step(total: float, most: int) -> float:
    """The smallest round step that puts at most ``most`` ticks after 0 on ``total`` seconds."""
    wanted = max(total, 1e-9) / max(most, 1)
    if wanted >= 1:
        for step in _CLOCK_STEPS:
            if step >= wanted:
                return float(step)
        hours = math.ceil(wanted / _HOUR)
        return float(_HOUR * tick_step(hours, 1))  # 1, 2, 5, 10 ... hours
    power = 10.0 ** math.floor(math.log10(wanted))
    for factor in (1, 2, 5, 10):
        if factor * power >= wanted * (1 - 1e-9):
            return factor * power
    return 10 * power


def ticks(total: float, most: int) -> list[float]:
    """0 and every multiple of ``tick_step`` up to ``total``."""
    step = tick_step(total, most)
    count = int(total / step + 1e-9)
    return [index * step for index in range(count + 1)]


def tick_label(offset: float, total: float) -> str:
    """``offset`` seconds into an axis ``total`` seconds long, in the axis's unit."""
    if offset == 0:
        return "0"
    if total < 0.001:
        return f"{_trim(offset * 1e6)} µs"
    if total < 1:
        return f"{_trim(offset * 1000)} ms"
    if total < 60 or offset != round(offset):
        return f"{_trim(offset)} s"
    whole = round(offset)
    hours, rest = divmod(whole, _HOUR)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes else []
    parts += [f"{seconds} s"] if seconds else []
    return " ".join(parts)


def _trim(value: float) -> str:
    """A tick value without float noise: ``0.30000000000000004`` is ``0.3``."""
    return f"{round(value, 6):g}"
