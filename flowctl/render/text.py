"""Line renderers for ``ps`` and plain ``watch``: records in, text out (``history``'s are in
``render.history``).

Every piece of text that came from a trace or from flowd (ids, names, statuses, paths,
problems) goes through the core's ``escape.safe``; the JSON renderers are exact (JSON
escapes control characters itself; output is ASCII).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from doeff_flow_core import LiveTrace, TraceFrame
from doeff_flow_core.escape import safe, safe_clip
from doeff_flow_core.records import COMPLETED, FAILED, LOST, UNKNOWN
from flowctl.render.timefmt import age, clock, seconds_between
from flowctl.sources.base import WorkflowEntry

ID_WIDTH: Final = 10  # the seed's columns: `wf-001    running     step 42`
STATUS_WIDTH: Final = 12
STEP_WIDTH: Final = 12
AGE_WIDTH: Final = 12
HISTORY_STATUS_WIDTH: Final = 10  # `step    1  running     Get('k')`
MAX_NOTE_CHARS: Final = 80
MAX_DETAIL_CHARS: Final = 200
INEXACT: Final = "≈"  # marks a call chain that is the task's last known, not exact


def location(frame: TraceFrame) -> str:
    return f"{safe(os.path.basename(frame.file) or frame.file)}:{frame.line}"


def effect_text(record: LiveTrace, limit: int = MAX_DETAIL_CHARS) -> str:
    return safe_clip(record.current_effect, limit) if record.current_effect else "-"


def chain_text(record: LiveTrace, limit: int = 80) -> str:
    """The call chain on one line, innermost kept when it must be cut: ``main › step``."""
    names = [safe(frame.function) for frame in record.trace]
    text = " › ".join(names)
    while len(text) > limit and len(names) > 1:
        names = names[1:]
        text = "… › " + " › ".join(names)
    if len(text) > limit:
        text = "…" + text[-(limit - 1) :]
    return f"{INEXACT} {text}" if names and not record.trace_exact else text


def outcome_text(record: LiveTrace, status: str, limit: int = MAX_NOTE_CHARS) -> str:
    """What a record says about how the workflow ended or stands, on one line."""
    if status == COMPLETED:
        return "result: " + (safe_clip(record.result, limit) if record.result else "-")
    if status == FAILED:
        return "error: " + (safe_clip(record.error, limit) if record.error else "-")
    if status == LOST:
        return f"lost: writer pid {record.pid} is gone"
    if status == UNKNOWN:
        return f"written on host {safe_clip(record.host or '?', 40)}: liveness unknown"
    return ""


def ps_columns(entry: WorkflowEntry, now: datetime, id_width: int) -> tuple[str, str, str]:
    """The id and the status, padded, then step, age and last slog (or the problem)."""
    status = safe_clip(entry.status, 40)  # flowd's word: any text, from a server not flowd
    head = (f"{safe(entry.name):<{id_width}}", f"{status:<{STATUS_WIDTH - 1}} ")
    record = entry.latest
    if record is None:
        return (*head, f"{'-':<{STEP_WIDTH}}{safe_clip(entry.problem or '', MAX_NOTE_CHARS)}")
    ago = age(seconds_between(record.updated_at, now)) + " ago"
    if entry.problem:  # a record, but one that cannot be taken as it says (another id)
        note = safe_clip(entry.problem, MAX_NOTE_CHARS)
    else:
        note = safe_clip(str(record.last_slog), MAX_NOTE_CHARS) if record.last_slog else ""
    return (*head, f"{'step ' + str(record.step):<{STEP_WIDTH}}{ago:<{AGE_WIDTH}}{note}")


def ps_line(entry: WorkflowEntry, now: datetime, id_width: int = ID_WIDTH) -> str:
    """``wf-001    running     step 42     3s ago      fetching page=3``."""
    return "".join(ps_columns(entry, now, id_width)).rstrip()


def id_column(entries: Sequence[WorkflowEntry]) -> int:
    """The seed's 10 columns, wider when an id needs it."""
    return max([ID_WIDTH - 2, *(len(safe(e.name)) for e in entries)]) + 2


def ps_lines(entries: Sequence[WorkflowEntry], now: datetime) -> list[str]:
    id_width = id_column(entries)
    return [ps_line(entry, now, id_width) for entry in entries]


def ps_json(entries: Iterable[WorkflowEntry], now: datetime) -> str:
    """One JSON array; each object is the latest record, ``status`` made effective."""
    return json.dumps([ps_object(entry, now) for entry in entries], indent=None)


def ps_object(entry: WorkflowEntry, now: datetime) -> dict[str, Any]:
    record = entry.latest
    data: dict[str, Any]
    if record is None:
        data = {
            "workflow_id": entry.workflow_id,
            "status": entry.status,
            "step": None,
            "updated_at": None,
            "problem": entry.problem,
        }
    else:
        data = record.to_dict()
        data["workflow_id"] = entry.workflow_id
        data["written_status"] = record.status
        data["status"] = entry.status
        data["age_seconds"] = round(seconds_between(record.updated_at, now), 3)
        data["problem"] = entry.problem
    if entry.root is not None:
        data["root"] = entry.root  # the same id is listed under another root too
    return data


MAX_ARGS_CHARS: Final = 60  # a task's arguments on a plain watch line


def change_line(
    record: LiveTrace, status: str, now: datetime, *, status_only: bool, name: str
) -> str:
    """Plain ``watch``: one line per change, ``12:00:00.123 wf-001 running step 4 ...``.

    ``name`` is the workflow as its directory (or flowd) names it, never the record's own
    ``workflow_id``: a record may say anything there."""
    # A run that ended is stamped with when it ended, not with when it was looked at.
    stamp = record.updated_at if record.is_terminal or status == LOST else now
    status = safe_clip(status, 40)
    head = f"{clock(stamp)}  {safe(name)}  {status:<{HISTORY_STATUS_WIDTH}}"
    if status_only:
        return head.rstrip()
    head = f"{head}  step {record.step}"
    if record.is_terminal or status in (LOST, UNKNOWN):
        return f"{head}  {outcome_text(record, status, MAX_DETAIL_CHARS)}"
    if record.task is None:
        chain = chain_text(record)
        return (
            f"{head}  {chain}  ↳ {effect_text(record)}"
            if chain
            else f"{head}  ↳ {effect_text(record)}"
        )
    # a task's line says which call it is in (its arguments) and how long its effect has
    # lasted so far: ten tasks in the same function are told apart
    chain = chain_text(record)
    inner = record.trace[-1] if record.trace else None
    if chain and inner is not None and inner.args is not None:
        chain += f"({safe_clip(inner.args, MAX_ARGS_CHARS)})"
    lasted = effect_age(seconds_between(record.updated_at, now))
    effect = f"↳ {effect_text(record)} · {lasted}"
    return f"{head}  [task {record.task}]  " + (f"{chain}  {effect}" if chain else effect)


def effect_age(seconds: float) -> str:
    """How long an effect has lasted: ``0.4s``, ``12.0s``, then ``4m05s``."""
    return f"{max(seconds, 0.0):.1f}s" if seconds < 60 else age(seconds)


def waiting_line(workflow_id: str, location: str) -> str:
    return f"waiting for {safe(workflow_id)} to start (no trace in {safe(location)} yet)"
