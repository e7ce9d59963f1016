"""``history``'s lines: each record with the time it was written and how long its step
stood, a run's first line when several are shown, and the derived last line of a run that
ended without a terminal record; ``--json``: the records exact, the derived line its own
object (``"derived": true``).

Text from a trace goes through the core's ``escape.safe``; the JSON is exact (JSON escapes
control characters itself; output is ASCII).
"""

from __future__ import annotations

import json
from typing import Final

from doeff_flow_core import LiveTrace
from doeff_flow_core.escape import safe_clip
from doeff_flow_core.records import COMPLETED, FAILED, LOST
from flowctl.render.text import HISTORY_STATUS_WIDTH, MAX_DETAIL_CHARS, effect_text, outcome_text
from flowctl.render.timefmt import clock, duration

TOOK_WIDTH: Final = 10  # ``3 min 05 s``, the widest ``duration``
CLOCK_SAMPLE: Final = "12:00:00.123"


def history_line(record: LiveTrace, took: float | None = None) -> str:
    """``step    1  running     12:00:00.123    413 ms  Get('k')``: the step, its status, when
    it was written and how long it stood (``took``: blank when unknown); a terminal line
    shows the result or the error."""
    if record.status in (COMPLETED, FAILED):
        text = outcome_text(record, record.status, MAX_DETAIL_CHARS)
    else:
        text = effect_text(record)
    task = f"  [task {record.task}]" if record.task is not None else ""
    status = safe_clip(record.status, 40)
    # Records carry milliseconds: less than one is said so, never as ``0 µs``.
    spent = "" if took is None else duration(took) if took >= 0.001 else "<1 ms"
    return (
        f"step {record.step:4d}  {status:<{HISTORY_STATUS_WIDTH}}  {clock(record.updated_at)}  "
        f"{spent:>{TOOK_WIDTH}}  {text}{task}"
    )


def history_ending_line(record: LiveTrace, status: str) -> str:
    """The derived last line of a run that wrote no terminal record (``lost``/``unknown``)."""
    if status == LOST:
        why = f"derived: no terminal record, writer pid {record.pid} is gone"
    else:
        host = safe_clip(record.host or "?", 40)
        why = f"derived: no terminal record yet, written on host {host}: liveness unknown"
    blank = "-"
    return (
        f"step {record.step:4d}  {safe_clip(status, 40):<{HISTORY_STATUS_WIDTH}}  "
        f"{blank:<{len(CLOCK_SAMPLE)}}  {'':>{TOOK_WIDTH}}  {why}"
    )


def history_run_line(record: LiveTrace) -> str:
    """Where a run begins, when history shows several: ``run 5d31ea8b8adf  pid 4242 on vm``."""
    where = f"  pid {record.pid}" if record.pid is not None else ""
    if record.host:
        where += f" on {safe_clip(record.host, 40)}"
    return f"run {safe_clip(record.run or '-', 80)}{where}  started {clock(record.started_at)}"


def history_json_line(record: LiveTrace) -> str:
    return json.dumps(record.to_dict(), separators=(",", ":"))


def history_ending_json(record: LiveTrace, status: str) -> str:
    """The derived line as its own object, ``"derived": true``: never a record's shape."""
    data = {
        "derived": True,
        "workflow_id": record.workflow_id,
        "run": record.run,
        "step": record.step,
        "status": status,
        "pid": record.pid,
        "host": record.host,
        "last_updated_at": record.updated_at.isoformat(timespec="milliseconds"),
    }
    return json.dumps(data, separators=(",", ":"))
