"""Giving memory back to the system after a burst (many subscriptions stopped at once).

A full collection empties the interpreter's free lists, whose blocks otherwise keep
half-empty arenas of small objects alive; ``malloc_trim`` then returns the C heap's free
pages (glibc only; elsewhere nothing more is done). Both take milliseconds, and run
only after bursts, never per request.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Final


def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the C library the interpreter runs on: no search, no subprocess
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


# Looked up once, when flowd starts: what it makes then stays for good, and made during a
# burst it would keep an arena of the burst's alive.
_TRIM: Final = _malloc_trim()


def release() -> None:
    """Free what is garbage now and hand the free memory back to the system."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
