"""The dashboard you drive: which workflow is selected, the filters, what a key does and
the picture. Pure: the state is a frozen value, a key gives a new one (and, for a few
keys, something for the caller to do: quit, open the selected workflow's watch).

Keys: ↑↓ (j k) select, PgUp PgDn (b space) a page, Home End (g G) the first or last,
Enter opens the selected workflow's watch (Esc there comes back), ``/`` filters by id
(typed text, Enter keeps it, Esc drops it), ``s`` cycles the status filter, Esc clears
the filters (with none, leaves), ``?`` shows the keys, ``q`` leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from doeff_flow_core.escape import safe
from doeff_flow_core.records import COMPLETED, FAILED, LOST, RUNNING, UNKNOWN
from flowctl.render.box import (
    Line,
    dashboard_header,
    dashboard_rows,
    fit_line,
    help_lines,
    sort_key,
)
from flowctl.render.text import id_column
from flowctl.sources.base import WorkflowEntry

STATUS_FILTERS: Final = (None, RUNNING, FAILED, LOST, COMPLETED, UNKNOWN)  # ``s`` cycles
QUIT: Final = "quit"
OPEN: Final = "open"
KEYS: Final = "q quit  ↑↓ select  Enter open  / filter  s status  ? help"
EDITING_KEYS: Final = "type an id  Enter keep  Esc drop  Backspace"
HELP: Final = (
    ("↑ ↓, j k", "select the previous, the next workflow"),
    ("PgUp PgDn, b space", "a page up, down"),
    ("Home End, g G", "the first, the last"),
    ("Enter", "open the selected workflow's watch (Esc comes back)"),
    ("/", "filter by id: type, Enter keeps it, Esc drops it"),
    ("s", "cycle the status filter: all, " + ", ".join(filter(None, STATUS_FILTERS))),
    ("Esc", "clear the filters; with none, quit"),
    ("q, Ctrl-C", "quit"),
    ("?", "this help (any key closes it)"),
)
ENTER: Final = "c-m"  # prompt-toolkit's name for Enter
BACKSPACE: Final = ("c-h", "backspace")


@dataclass(frozen=True)
class DashboardUI:
    selected: str | None = None  # the selected workflow's name (None: the first shown)
    query: str = ""  # ``/``: ids containing it (any case)
    editing: bool = False  # the query is being typed
    status: str | None = None  # ``s``: only this status
    help: bool = False


def shown(entries: Sequence[WorkflowEntry], ui: DashboardUI) -> list[WorkflowEntry]:
    """The workflows that pass the filters, by status then the longest without an update."""
    query = ui.query.casefold()
    return sorted(
        (
            entry
            for entry in entries
            if query in entry.name.casefold() and (ui.status is None or entry.status == ui.status)
        ),
        key=sort_key,
    )


def selected_index(listed: Sequence[WorkflowEntry], ui: DashboardUI) -> int:
    names = [entry.name for entry in listed]
    return names.index(ui.selected) if ui.selected in names else 0


def press(
    ui: DashboardUI, key: str, listed: Sequence[WorkflowEntry], page: int = 10
) -> tuple[DashboardUI, str | None]:
    """``ui`` after ``key`` (prompt-toolkit's name, or the character typed), and what the
    caller must do: QUIT, OPEN (the selected workflow) or nothing."""
    if ui.help:
        return replace(ui, help=False), None
    if ui.editing:
        if key == ENTER:
            return replace(ui, editing=False), None
        if key == "escape":
            return replace(ui, editing=False, query=""), None
        if key in BACKSPACE:
            return replace(ui, query=ui.query[:-1]), None
        if len(key) == 1 and key.isprintable():
            return replace(ui, query=ui.query + key), None
        return ui, None
    here = selected_index(listed, ui)
    moves = {
        "down": here + 1,
        "j": here + 1,
        "up": here - 1,
        "k": here - 1,
        "pagedown": here + page,
        " ": here + page,
        "pageup": here - page,
        "b": here - page,
        "home": 0,
        "g": 0,
        "end": len(listed) - 1,
        "G": len(listed) - 1,
    }
    if key in moves:
        if not listed:
            return ui, None
        index = max(0, min(moves[key], len(listed) - 1))
        return replace(ui, selected=listed[index].name), None
    if key == ENTER:
        if not listed:
            return ui, None
        return replace(ui, selected=listed[here].name), OPEN
    if key == "/":
        return replace(ui, editing=True), None
    if key == "s":
        following = STATUS_FILTERS[(STATUS_FILTERS.index(ui.status) + 1) % len(STATUS_FILTERS)]
        return replace(ui, status=following), None
    if key == "?":
        return replace(ui, help=True), None
    if key == "q":
        return ui, QUIT
    if key == "escape":
        if ui.query or ui.status is not None:
            return replace(ui, query="", status=None), None
        return ui, QUIT
    return ui, None


def _filter_line(ui: DashboardUI, count: int, total: int) -> Line:
    parts: Line = []
    if ui.editing or ui.query:
        parts.append(("class:filter", f"/{safe(ui.query)}" + ("▏" if ui.editing else "")))
    if ui.status is not None:
        parts.append(("class:filter", ("  " if parts else "") + f"status: {ui.status}"))
    if parts:
        parts.append(("class:note", f"  · {count} of {total} shown"))
    return parts


def picture(
    entries: Sequence[WorkflowEntry],
    ui: DashboardUI,
    now: datetime,
    columns: int,
    rows: int | None,
    *,
    source: str,
    present: bool = True,
) -> list[Line]:
    """The dashboard at most ``rows`` tall (whole with None): the counts of every
    workflow, the filters, a page of the workflows that pass them with the selected one
    marked, and the keys."""
    header = dashboard_header(entries, now, source)
    if ui.help:
        lines = [header, [], [("class:title", "keys")], *help_lines(HELP)]
        return [fit_line(line, columns) for line in lines][: rows or None]
    listed = shown(entries, ui)
    head: list[Line] = [header]
    filters = _filter_line(ui, len(listed), len(entries))
    head += [filters] if filters else []
    head.append([])
    body: list[Line] = []
    if not present:
        body.append([("class:note", "waiting for the trace directory to appear")])
    elif not entries:
        body.append([("class:note", "no workflows yet")])
    elif not listed:
        body.append([("class:note", "no workflow passes the filters (Esc clears them)")])
    here = selected_index(listed, ui)
    selected = listed[here].name if listed else None
    pairs = dashboard_rows(listed, now, id_column(listed), selected)
    footer: Line = [("class:footer", EDITING_KEYS if ui.editing else KEYS)]
    if rows is None:
        lines = [*head, *body, *(line for pair in pairs for line in pair)]
        return [fit_line(line, columns) for line in lines]
    per_page = max((rows - len(head) - len(body) - 2) // 2, 1)
    first = here // per_page * per_page
    page = pairs[first : first + per_page]
    body += [line for pair in page for line in pair]
    below = len(pairs) - first - len(page)
    hint = f"+{below} more (↓)" if below else ""
    if first:
        hint += ("  " if hint else "") + f"{first} above (↑)"
    lines = [*head, *body][: max(rows - 2, 0)]
    lines += [[] for _ in range(rows - 2 - len(lines))]  # the keys at the bottom, as in htop
    lines += [[("class:hint", hint)], footer]
    return [fit_line(line, columns) for line in lines][-rows:] if rows > 0 else []


def page_size(rows: int) -> int:
    """How far PgUp and PgDn move: about a page of two-line rows."""
    return max((rows - 5) // 2, 1)
