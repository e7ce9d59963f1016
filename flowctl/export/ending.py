"""How a run with no terminal record stands, as the exports say it: ``lost`` (its writer
is gone), ``unknown`` (written on another host, so nobody here can tell) or ``still
running``. ``flowctl export`` decides it from the run's last record, as ``flowctl ps``
does, and hands it to the writers; the spans of such a run are ``incomplete``."""

from __future__ import annotations

from typing import Final, NamedTuple

LOST: Final = "lost"
UNKNOWN: Final = "unknown"
STILL_RUNNING: Final = "still running"


class Ending(NamedTuple):
    """The word, and a plain sentence saying why (pid and host from the trace: untrusted)."""

    word: str
    why: str
