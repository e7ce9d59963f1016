"""Giving memory back to the system after a burst (many subscriptions stopped at once).

A full collection empties the interpreter's free lists, whose blocks otherwise keep
half-empty arenas of small objects alive; ``malloc_trim`` then returns the C heap's free
pages (glibc only; elsewhere nothing more is done). Both take milliseconds, and run
only after bursts, never per request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release() -> None:
    """Free what is garbage now and hand the free memory back to the system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
