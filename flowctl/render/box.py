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
from doeff_flow_core.records import COMPLETED, FAILED, LOST, RUNNING, UNKNOWN, SlogLine
from doeff_flow_core.tracefiles.scan import id_problem
from flowctl.render.text import (
    INEXACT,
    chain_text,
    effect_age,
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


def frame_name(frame: TraceFrame, limit: int | None = None) -> str:
    """``fetch_region(region='apac', pages=4)``: the function with its arguments (when the
    record has them), the arguments cut so the whole fits ``limit`` columns."""
    name = safe(frame.function)
    if frame.args is None:
        return name
    if limit is None:
        return f"{name}({safe(frame.args)})"
    room = max(limit - width(name) - 2, 1)
    return f"{name}({fit(safe(frame.args), room)})"


def chain_lines(
    record: LiveTrace,
    *,
    effect: bool = True,
    columns: int | None = None,
    lead: str = "",
    effect_suffix: Sequence[Fragment] = (),
) -> list[Line]:
    """The call chain as a tree, then ``↳ current effect``; ``≈`` marks an inexact chain.

    ``lead`` starts the first row (``task 3  ``), the rest indented under it; with
    ``columns``, each frame's arguments are cut so its location still fits."""
    shown = _shown_frames(record.trace)
    where_width = max([0, *(width(location(f)) for f in shown if not isinstance(f, int))])
    pad = " " * width(lead)
    rows: list[tuple[str, str, str]] = []
    for depth, frame in enumerate(shown):
        prefix = (lead if depth == 0 else pad) + _indent(depth)
        if isinstance(frame, int):
            rows.append((prefix, f"┄ {frame} more frames", ""))
        else:
            limit = None if columns is None else columns - width(prefix) - where_width - 3
            rows.append((prefix, frame_name(frame, limit), location(frame)))
    if rows and not record.trace_exact:
        rows[0] = (f"{lead}{INEXACT} ", *rows[0][1:])
    column = max([LOCATION_COLUMN - 3, *(width(p + n) for p, n, _ in rows)]) + 3
    out: list[Line] = []
    for prefix, name, where in rows:
        gap = " " * (column - width(prefix + name))
        out.append(
            [("class:tree", prefix), ("class:function", name), ("", gap), ("class:location", where)]
        )
    if effect and record.current_effect is not None:
        indent = pad + _effect_indent(len(rows))
        shown_effect = "↳ " + effect_text(record)
        if columns is not None:  # the effect is cut, not how long it has lasted
            room = columns - width(indent) - sum(width(text) for _, text in effect_suffix)
            shown_effect = fit(shown_effect, max(room, 12))
        out.append([("", indent), ("class:effect", shown_effect), *list(effect_suffix)])
    if rows and not record.trace_exact:
        out.append([("class:note", f"{INEXACT} approximate chain: the task's last known stack")])
    return out


def _task_lines(
    task: LiveTrace, slog: SlogLine | None, now: datetime, columns: int, label: int
) -> list[Line]:
    """``task 3  fetch_region(region='apac', pages=4)   file.py:14`` then its effect, how
    long it has lasted and the task's own last slog."""
    suffix: Line = [("class:idle", f" · {effect_age(seconds_between(task.updated_at, now))}")]
    if slog is not None:
        suffix.append(("class:slog", "  slog: " + safe(str(slog))))
    lead = f"{'task ' + str(task.task):<{label}}  "
    if not task.trace:
        effect = [("class:effect", "↳ " + effect_text(task)), *suffix]
        return [[("class:task", lead.rstrip())], [("", " " * len(lead)), *effect]]
    lines = chain_lines(task, columns=columns, lead=lead, effect_suffix=suffix)
    first = lines[0]
    lines[0] = [("class:task", lead), ("class:tree", first[0][1][len(lead) :]), *first[1:]]
    return lines


def _failed_task_lines(view: WorkflowView, columns: int) -> list[Line]:
    """``failed in task 13 · fetch_region(region='latam', pages=4)`` and what that task
    said last (the workflow's last slog may be another task's)."""
    task = view.failed_task
    if task is None or task.task is None:
        return []
    text = f"failed in task {task.task}"
    if task.trace:
        text += " · " + frame_name(task.trace[-1], columns - width(text) - 3)
    lines: list[Line] = [[("class:status.failed", text)]]
    own = view.slog_of(task.task)
    if own is not None:
        lines.append([("class:slog", "  its last slog: " + safe(str(own)))])
    return lines


def _status_lines(view: WorkflowView, status: str, now: datetime, columns: int) -> list[Line]:
    record = view.latest
    assert record is not None
    lines: list[Line] = []
    outcome = outcome_text(record, status, 400)
    if outcome:
        lines.append([(status_style(status), outcome)])
    if status == FAILED and record.is_terminal:
        lines += _failed_task_lines(view, columns)
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


WATCH_KEYS: Final = "q quit  ↑↓ PgUp PgDn scroll  ? help"
WATCH_HELP: Final = (
    ("q, Ctrl-C", "quit"),
    ("Esc", "back to the dashboard (opened from it), else quit"),
    ("↑ ↓, j k", "scroll a line"),
    ("PgUp PgDn, b space", "scroll a page"),
    ("Home End, g G", "the top, the bottom"),
    ("?", "this help (any key closes it)"),
)


def help_lines(keys: Sequence[tuple[str, str]]) -> list[Line]:
    column = max(width(key) for key, _ in keys) + 3
    return [[("class:title", key + " " * (column - width(key))), ("", what)] for key, what in keys]


def watch_box(
    view: WorkflowView,
    status: str | None,
    now: datetime,
    columns: int,
    *,
    location: str,
    status_only: bool = False,
) -> list[Line]:
    """The seed's box for one workflow, ``columns`` wide, whole."""
    return watch_picture(view, status, now, columns, location=location, status_only=status_only)[0]


def watch_picture(
    view: WorkflowView,
    status: str | None,
    now: datetime,
    columns: int,
    *,
    location: str,
    status_only: bool = False,
    rows: int | None = None,
    top: int = 0,
    footer: str = WATCH_KEYS,
) -> tuple[list[Line], int]:
    """The seed's box for one workflow, ``columns`` wide, and the scroll used.

    With ``rows``, the picture is at most that tall: the call chains scroll between the
    title and the status lines, ``+N more tasks (↓)`` saying what is below, and the keys
    are shown under the box. Without, it is whole (the picture left on the terminal)."""
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
        return _framed(title, [], body, [], columns, rows, 0, footer)
    title = [
        ("class:title", f"{safe(view.workflow_id)} "),
        (status_style(status), f"[{safe_clip(status, 40)}]"),
        ("class:title", f" step {record.step}"),
    ]
    inner = max(columns, MIN_BOX_WIDTH) - 5
    body = []
    starts: list[int] = []  # where each task's lines start in body
    if not status_only:
        root = view.root if view.root is not None else record
        if record.is_terminal and status == FAILED and record.trace:
            body += [[("class:note", "raised at:")], *chain_lines(record, effect=False), []]
        elif not record.is_terminal:
            if root.trace or root.current_effect:
                quiet = seconds_between(root.updated_at, now)
                suffix: Line = (
                    [("class:idle", f" · {effect_age(quiet)}")] if quiet >= QUIET_AFTER else []
                )
                body += [*chain_lines(root, columns=inner, effect_suffix=suffix), []]
            if view.tasks:
                count = len(view.tasks)
                body.append(
                    [("class:note", f"{count} task{'s' * (count != 1)}, longest idle first")]
                )
            label = max([0, *(len(f"task {task.task}") for task in view.tasks)])
            slogs = dict(view.own_slogs)
            for task in view.tasks:
                starts.append(len(body))
                body += _task_lines(task, slogs.get(task.task or 0), now, inner, label)
            if view.tasks:
                body.append([])
    tail = _status_lines(view, status, now, inner)
    return _framed(title, [[]], body, tail, columns, rows, top, footer, starts)


def _framed(
    title: Line,
    head: list[Line],
    body: list[Line],
    tail: list[Line],
    columns: int,
    rows: int | None,
    top: int,
    footer: str,
    starts: Sequence[int] = (),
) -> tuple[list[Line], int]:
    """``head``, ``body`` and ``tail`` boxed; with ``rows``, ``body`` scrolled to fit."""
    if rows is None:
        return box(title, [*head, *body, *tail], columns), 0
    room = rows - 3 - len(head) - len(tail)  # the borders and the footer
    if len(body) > room and room >= 3:
        window = room - 1  # the last line says what is below
        top = max(0, min(top, len(body) - window))
        below = sum(1 for start in starts if start >= top + window)
        above = sum(1 for start in starts if start < top)
        hint = f"+{below} more task{'s' * (below != 1)} (↓)" if below else ""
        if above:
            hint += ("  " if hint else "") + f"{above} above (↑)"
        if not hint:
            hint = "more above (↑)" if top else "more below (↓)"
        shown = [*body[top : top + window], [("class:hint", hint)]]
    else:
        top, shown = 0, body
    lines = box(title, [*head, *shown, *tail], columns)[: max(rows - 1, 1)]
    return [*lines, [("class:footer", fit(footer, max(columns, MIN_BOX_WIDTH)))]], top


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


MARKS: Final = {FAILED: "✗", LOST: "!", UNREADABLE: "?"}  # read without colour too


def sort_key(entry: WorkflowEntry) -> tuple[int, float, str]:
    """By status (running first), then the longest without an update first."""
    order = STATUS_ORDER.index(entry.status) if entry.status in STATUS_ORDER else len(STATUS_ORDER)
    updated = entry.latest.updated_at.timestamp() if entry.latest is not None else 0.0
    return (order, updated, entry.name)


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


def dashboard_header(entries: Sequence[WorkflowEntry], now: datetime, source: str) -> Line:
    return [
        ("class:title", "doeff-flow · "),
        ("", status_counts(e.status for e in entries)),
        ("class:updated", f" · {clock(now)[:8]} · "),
        ("class:note", safe(source)),
    ]


def dashboard_rows(
    entries: Sequence[WorkflowEntry],
    now: datetime,
    id_width: int,
    selected: str | None = None,
) -> list[tuple[Line, Line]]:
    """Two lines a workflow, in the order given: ``▶ ✗ wf-bad  failed  step 5 ...`` (the
    selection, a mark for failed and lost) and its chain and effect, result or error."""
    out = []
    for entry in entries:
        chosen = entry.name == selected
        mark = MARKS.get(entry.status, " ")
        style = "class:selected" if chosen else ""
        emphasis = f"{style} class:row.{entry.status}" if entry.status in MARKS else style
        name, status, rest = ps_columns(entry, now, id_width)
        first: Line = [
            (style, "▶ " if chosen else "  "),
            (f"{emphasis} {status_style(entry.status)}", mark + " "),
            (f"{emphasis} class:title", name),
            (f"{emphasis} {status_style(entry.status)}", status),
            (emphasis, rest),
        ]
        out.append((first, [("", " " * 6), *_detail(entry)]))
    return out


def dashboard(
    entries: Sequence[WorkflowEntry],
    now: datetime,
    columns: int,
    *,
    source: str,
    present: bool = True,
) -> list[Line]:
    """Every workflow: the ps columns, then its call chain and effect, result or error."""
    lines: list[Line] = [dashboard_header(entries, now, source), []]
    if not present:
        lines.append([("class:note", "waiting for the trace directory to appear")])
    elif not entries:
        lines.append([("class:note", "no workflows yet")])
    for first, second in dashboard_rows(sorted(entries, key=sort_key), now, id_column(entries)):
        lines += [first, second]
    return [fit_line(line, columns) for line in lines]
