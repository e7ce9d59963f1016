"""``watch`` when the output is not a terminal: plain lines, one per observed change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from doeff_flow_core.escape import safe
from flowctl import exitcodes
from flowctl.sources.base import Notes
from flowctl.watch.model import WatchModel


def run_plain(
    model: WatchModel,
    interval: float,
    exit_on_complete: bool,
    out: TextIO,
    notes: Notes | None = None,
    err: TextIO | None = None,
) -> int:
    """Print changes until the work ends (with ``exit_on_complete``) or Ctrl-C; what the
    source says of itself (``notes``: flowd went away, is back) goes to ``err``."""
    timeout = 0.0
    try:
        while True:
            model.tick(timeout)
            timeout = interval
            for note in notes.take() if notes is not None else ():
                if err is not None:
                    print(f"flowctl: {safe(note)}", file=err, flush=True)
            lines = model.plain_lines(datetime.now(UTC))
            if lines:
                out.write("".join(line + "\n" for line in lines))
                out.flush()
            if exit_on_complete:
                code = model.outcome()
                if code is not None:
                    return code
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED if exit_on_complete else exitcodes.OK
    finally:
        model.close()
