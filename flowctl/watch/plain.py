"""``watch`` when the output is not a terminal: plain lines, one per observed change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from doeff_flow_core.escape import safe
from flowctl import exitcodes
from flowctl.sources.base import Notes
from flowctl.watch.model import WatchModel, WorkflowWatch


def run_plain(
    model: WatchModel,
    interval: float,
    exit_on_complete: bool,
    out: TextIO,
    notes: Notes | None = None,
    err: TextIO | None = None,
) -> int:
    """Print changes until the work ends (with ``exit_on_complete``) or Ctrl-C; a workflow
    that had ended before the watch began is shown once (stamped with when it ended) and
    the watch exits with its outcome, with or without ``exit_on_complete``. What the
    source says of itself (``notes``: flowd went away, is back) goes to ``err``."""
    timeout = 0.0
    seen = False  # whether the workflow's state has been seen yet
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
            code = model.outcome()
            if exit_on_complete and code is not None:
                return code
            if not seen and isinstance(model, WorkflowWatch) and model.status is not None:
                seen = True
                if code is not None:
                    return code  # it had ended before the watch began: nothing to wait for
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED if exit_on_complete else exitcodes.OK
    finally:
        model.close()
