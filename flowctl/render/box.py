"""Full-screen renderers: the seed's watch box and the all-workflows dashboard.

Pure functions from records (and the effective status, the time now, the width) to
lines of ``(style, text)`` fragments, which prompt-toolkit draws and ``plain`` joins into
text for tests and for leaving the last picture on the terminal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from doeff_flow_core import LiveTrace, TraceFrame
from doeff_flow_core.escape import safe, safe_clip
from doeff_flow_core.records import COMPLETED, FAILED, LOST, RUNNING, UNKNOWN
from doeff_flow_core.tracefiles.reading import id_problem
from flowctl.render.text import (
    INEXACT,
    chain_text,
    effect_text,
    id_column,
    location,
    outcome_text,
    ps_columns,
)
from flowctl.render.textwidth import fit, width
from flowctl.render.timefmt import age, clock, seconds_between
from flowctl.sources.base import EMPTY, UNREADABLE, WorkflowEntry, split_name
from flowctl.watch.state import WorkflowView

Fragment = tuple[str, str]
Line = list[Fragment]

IDLE_AFTER: Final = 2.0  # seconds without a record before a running workflow shows idle time
QUIET_AFTER: Final = 2.0  # the same for a task, relative to the newest record
MAX_FRAMES: Final = 8  # longer chains show their 2 outermost and 5 innermost frames
MIN_BOX_WIDTH: Final = 40
LOCATION_COLUMN: Final = 22
STATUS_ORDER: Final = (RUNNING, UNKNOWN, LOST, FAILED, EMPTY, UNREADABLE, COMPLETED)


def plain(lines: Iterable[Line]) -> str:
    return "\n".join("".join(text for _, text in line).rstrip() for line in lines)


def status_style(status: str) -> str:
    # a status flowd sent may be any text: only a plain word becomes a style class
    return f"class:status.{status}" if status.isalpha() and status.isascii() else ""


# -- the watch box -------------------------------------------------------------------------


def _indent(depth: int) -> str:
    """The seed's tree: ``main`` / ``  └─ step`` / ``       └─ call``."""
    return "" if depth == 0 else " " * (2 + 5 * (depth - 1)) + "└─ "


def _effect_indent(depth: int) -> str:
    return " " * (2 + 5 * (depth - 1)) if depth > 0 else ""


def _shown_frames(frames: Sequence[TraceFrame]) -> list[TraceFrame | int]:
    """The frames to draw; an int stands for that many frames left out."""
    if len(frames) <= MAX_FRAMES:
        return list(frames)
    return [*frames[:2], len(frames) - 7, *frames[-5:]]


def chain_lines(record: LiveTrace, *, effect: bool = True) -> list[Line]:
    """The call chain as a tree, then ``↳ current effect``; ``≈`` marks an inexact chain."""
    shown = _shown_frames(record.trace)
    rows: list[tuple[str, str, str]] = []
    for depth, frame in enumerate(shown):
        if isinstance(frame, int):
            rows.append((_indent(depth), f"┄ {frame} more frames", ""))
        else:
            rows.append((_indent(depth), safe(frame.function), location(frame)))
    if rows and not record.trace_exact:
        rows[0] = (f"{INEXACT} ", *rows[0][1:])
    column = max([LOCATION_COLUMN - 3, *(width(p + n) for p, n, _ in rows)]) + 3
    out: list[Line] = []
    for prefix, name, where in rows:
        gap = " " * (column - width(prefix + name))
        out.append(
            [("class:tree", prefix), ("class:function", name), ("", gap), ("class:location", where)]
        )
    if effect and record.current_effect is not None:
        out.append([("", _effect_indent(len(rows))), ("class:effect", "↳ " + effect_text(record))])
    if rows and not record.trace_exact:
        out.append([("class:note", f"{INEXACT} approximate chain: the task's last known stack")])
    return out


def _task_lines(task: LiveTrace, newest: LiveTrace) -> list[Line]:
    quiet = seconds_between(task.updated_at, newest.updated_at)
    label = f"task {task.task}" + (f" · quiet {age(quiet)}" if quiet >= QUIET_AFTER else "")
    return [[("class:task", label)], *[[("", "  "), *line] for line in chain_lines(task)]]


def _status_lines(view: WorkflowView, status: str, now: datetime) -> list[Line]:
    record = view.latest
    assert record is not None
    lines: list[Line] = []
    outcome = outcome_text(record, status, 400)
    if outcome:
        lines.append([(status_style(status), outcome)])
    if record.last_slog is not None:
        lines.append([("class:slog", "slog: " + safe(str(record.last_slog)))])
    updated = [("class:updated", f"Updated: {clock(record.updated_at)}")]
    quiet = seconds_between(record.updated_at, now)
    if status in (RUNNING, UNKNOWN) and quiet >= IDLE_AFTER:
        updated.append(("class:idle", f"   idle {age(quiet)}"))
    elif status == LOST:
        updated.append(("class:idle", f"   no update for {age(quiet)}"))
    lines.append(updated)
    if view.skipped:
        lines.append([("class:note", f"{view.skipped} malformed trace lines skipped")])
    other = id_problem(split_name(view.workflow_id)[0], record)
    if other is not None:
        lines.append([("class:note", safe_clip(other, 200))])
    return lines


def watch_box(
    view: WorkflowView,
    status: str | None,
    now: datetime,
    columns: int,
    *,
    location: str,
    status_only: bool = False,
) -> list[Line]:
    """The seed's box for one workflow, ``columns`` wide."""
    record = view.latest
    if record is None or status is None:
        title: Line = [
            ("class:title", f"{safe(view.workflow_id)} "),
            ("class:status.waiting", "[waiting]"),
        ]
        body: list[Line] = [
            [("class:note", f"waiting for {safe(view.workflow_id)} to start")],
            [("class:note", f"(no trace in {safe(location)} yet)" if not view.present else "")],
        ]
        return box(title, body, columns)
    title = [
        ("class:title", f"{safe(view.workflow_id)} "),
        (status_style(status), f"[{safe_clip(status, 40)}]"),
        ("class:title", f" step {record.step}"),
    ]
    body = []
    if not status_only:
        root = view.root if view.root is not None else record
        if record.is_terminal and status == FAILED and record.trace:
            body += [[("class:note", "raised at:")], *chain_lines(record, effect=False), []]
        elif not record.is_terminal:
            if root.trace or root.current_effect:
                body += [*chain_lines(root), []]
            for task in view.tasks:
                body += [*_task_lines(task, record), []]
    body += _status_lines(view, status, now)
    return box(title, [[], *body], columns)


def box(title: Line, body: Sequence[Line], columns: int) -> list[Line]:
    """``body`` framed: ``┌─ title ──┐`` / ``│  line  │`` / ``└──┘``."""
    columns = max(columns, MIN_BOX_WIDTH)
    inner = columns - 2
    title = fit_line(title, inner - 4)
    title_width = sum(width(text) for _, text in title)
    top: Line = [
        ("class:border", "┌─ "),
        *title,
        ("class:border", " " + "─" * (inner - 3 - title_width) + "┐"),
    ]
    lines = [top]
    for line in body:
        lines.append([("class:border", "│  "), *pad_line(line, inner - 3), ("class:border", " │")])
    lines.append([("class:border", "└" + "─" * inner + "┘")])
    return lines


def fit_line(line: Line, columns: int) -> Line:
    """``line`` cut to ``columns`` columns."""
    out: Line = []
    left = columns
    for style, text in line:
        if left <= 0:
            break
        shown = fit(text, left)
        out.append((style, shown))
        left -= width(shown)
        if shown != text:
            break
    return out


def pad_line(line: Line, columns: int) -> Line:
    fitted = fit_line(line, columns)
    used = sum(width(text) for _, text in fitted)
    return [*fitted, ("", " " * (columns - used))]


# -- the dashboard -------------------------------------------------------------------------


def status_counts(statuses: Iterable[str]) -> str:
    """``2 running · 1 failed`` in a fixed order; ``no workflows`` when empty."""
    counts = Counter(statuses)
    parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in STATUS_ORDER]
    return safe(" · ".join(parts)) if parts else "no workflows"


def _sort_key(entry: WorkflowEntry) -> tuple[int, str]:
    order = STATUS_ORDER.index(entry.status) if entry.status in STATUS_ORDER else len(STATUS_ORDER)
    return (order, entry.name)


def _detail(entry: WorkflowEntry) -> Line:
    record = entry.latest
    if record is None:
        return [("class:note", safe(entry.problem or ""))]
    outcome = outcome_text(record, entry.status, 200)
    if outcome:
        return [(status_style(entry.status), outcome)]
    chain = chain_text(record, 60)
    effect = "↳ " + effect_text(record)
    return [("class:function", chain + "  " if chain else ""), ("class:effect", effect)]


def dashboard(
    entries: Sequence[WorkflowEntry],
    now: datetime,
    columns: int,
    *,
    source: str,
    present: bool = True,
) -> list[Line]:
    """Every workflow: the ps columns, then its call chain and effect, result or error."""
    header: Line = [
        ("class:title", "doeff-flow · "),
        ("", status_counts(e.status for e in entries)),
        ("class:updated", f" · {clock(now)[:8]} · "),
        ("class:note", safe(source)),
    ]
    lines: list[Line] = [header, []]
    if not present:
        lines.append([("class:note", "waiting for the trace directory to appear")])
    elif not entries:
        lines.append([("class:note", "no workflows yet")])
    id_width = id_column(entries)
    for entry in sorted(entries, key=_sort_key):
        name, status, rest = ps_columns(entry, now, id_width)
        lines.append([("class:title", name), (status_style(entry.status), status), ("", rest)])
        lines.append([("", " " * 4), *_detail(entry)])
    return [fit_line(line, columns) for line in lines]
