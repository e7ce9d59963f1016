"""``flowctl profile``'s output: a run's profile as text (a heading, then a table in the
manner of ``py-spy top``'s summary, fitted to the terminal's width) or as one JSON object.

Pure: a ``Profile`` in, lines out. Names and files come from the trace, so the text goes
through the core's ``escape.safe``; the JSON is exact.
"""

from __future__ import annotations

import json
import os
import textwrap
from datetime import UTC, datetime
from typing import Any, Final

from doeff_flow_core.escape import safe
from doeff_flow_core.timeline.profile import CALLSITE, CONCURRENCY_NOTE, Entry, Profile
from doeff_flow_core.timeline.spans import WORKFLOW
from flowctl.render.textwidth import fit, width

MIN_NAME_COLUMNS: Final = 24  # the function column never narrower, however narrow the terminal
MIN_WAITS_COLUMNS: Final = 12
MIN_NARROW_NAME: Final = 8  # on a terminal too narrow for the table, the function still shows
WAITS_SHOWN: Final = 2  # effect types named in the waits column
STATUS_WORDS: Final = {"ok": "completed", "error": "failed"}  # the workflow's words


def seconds_text(seconds: float) -> str:
    """A duration in at most five characters: ``850µs``, ``20.3ms``, ``1.20s``, ``3m05s``."""
    if seconds < 0.000_999_5:
        return f"{max(seconds, 0.0) * 1e6:.0f}µs"
    if seconds < 0.999_5:
        millis = seconds * 1000
        return (
            f"{millis:.2f}ms"
            if millis < 9.995
            else f"{millis:.1f}ms"
            if millis < 99.95
            else f"{millis:.0f}ms"
        )
    if seconds < 59.995:
        return f"{seconds:.2f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def percent_text(share: float) -> str:
    return f"{share * 100:.1f}%"


def where(file: str | None, line: int | None) -> str:
    """``report.py:30``: a file's base name and a line, escaped."""
    if file is None:
        return "-"
    name = safe(os.path.basename(file) or file)
    return f"{name}:{line}" if line is not None else name


def entry_label(entry: Entry, by: str) -> str:
    """What a row is about: ``fetch_page (report.py:30)``; by call site, the site first
    (``report.py:42 → fetch_page``); the run's own row: ``(workflow report-fail)``."""
    if entry.kind == WORKFLOW:
        return f"(workflow {safe(entry.name)})"
    if by == CALLSITE:
        site = where(entry.site_file, entry.site_line) if entry.site_file else "(no caller)"
        return f"{site} → {safe(entry.name)}"
    return f"{safe(entry.name)} ({where(entry.file, entry.line)})"


def waits_text(entry: Entry, shown: int = WAITS_SHOWN) -> str:
    """The effect types its calls waited in most, with their time: ``Await 1.20s  Ask 10.0ms``."""
    parts = [f"{safe(kind)} {seconds_text(seconds)}" for kind, seconds in entry.waits[:shown]]
    if len(entry.waits) > shown:
        parts.append(f"+{len(entry.waits) - shown}")
    return "  ".join(parts) or "-"


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def raised_text(profile: Profile) -> str | None:
    """A failed run's error and the call it was raised in:
    ``UpstreamError: … · raised in fetch_page(region='latam', page=1) in task 4``."""
    if profile.error is None:
        return None
    text = f"error: {safe(profile.error)}"
    raised = profile.raised
    if raised is not None:
        call = safe(raised.name) + ("" if raised.args is None else f"({safe(raised.args)})")
        task = "the root task" if raised.task is None else f"task {raised.task}"
        text += f" · raised in {call} in {task}"
    return text


def heading(profile: Profile) -> list[str]:
    """Two lines: what was profiled and its times; how concurrent time is counted."""
    tasks = f"{profile.tasks} task{'' if profile.tasks == 1 else 's'}"
    calls = f"{profile.calls} call{'' if profile.calls == 1 else 's'}"
    first = (
        f"{safe(profile.workflow_id)}  run {safe(profile.run)}  {status_word(profile.status)}"
        f"  wall {seconds_text(profile.wall)}  summed {seconds_text(profile.summed)}"
        f" over {tasks}, {calls}"
    )
    return [first, f"({CONCURRENCY_NOTE})"]


def _wrapped(text: str, columns: int) -> list[str]:
    return textwrap.wrap(text, max(columns, 20)) if width(text) > columns else [text]


NUMBER_COLUMNS: Final = (
    ("own%", 6),
    ("own", 7),
    ("total", 7),
    ("calls", 8),
    ("mean", 7),
    ("max", 7),
)


def profile_lines(profile: Profile, columns: int, top: int | None = None) -> list[str]:
    """The heading, a blank line and the table of ``profile``'s entries (the first ``top``),
    each line at most ``columns`` wide (the function column is cut last)."""
    entries = profile.entries if top is None else profile.entries[:top]
    rows = []
    for entry in entries:
        numbers = (
            percent_text(profile.own_share(entry)),
            seconds_text(entry.own),
            seconds_text(entry.total),
            f"{entry.calls} ✗{entry.failed}" if entry.failed else str(entry.calls),
            seconds_text(entry.mean),
            seconds_text(entry.longest),
        )
        rows.append((numbers, waits_text(entry), entry_label(entry, profile.by)))
    number_part = sum(size + 1 for _, size in NUMBER_COLUMNS)
    waits_natural = max([width("waits"), *(width(waits) for _, waits, _ in rows)])
    name_natural = max([width("function (file:line)"), *(width(label) for *_, label in rows)])
    # The waits column gives way first, to keep the function in sight; on a terminal too
    # narrow for both it goes, and the function takes what is left.
    room = columns - number_part - 2
    if room >= MIN_NAME_COLUMNS + MIN_WAITS_COLUMNS + 2:
        waits_width = min(waits_natural, max(room - name_natural - 2, MIN_WAITS_COLUMNS))
        name_width = room - waits_width - 2
    else:
        waits_width, name_width = 0, max(room, MIN_NARROW_NAME)
    title = "function (file:line)" if profile.by != CALLSITE else "call site → function"

    def line(numbers: tuple[str, ...], waits: str, label: str) -> str:
        cells = " ".join(
            text.rjust(size) for text, (_, size) in zip(numbers, NUMBER_COLUMNS, strict=True)
        )
        if not waits_width:
            return f"{cells}  {fit(label, name_width)}".rstrip()
        waits_cell = fit(waits, waits_width)
        waits_cell += " " * (waits_width - width(waits_cell))
        return f"{cells}  {waits_cell}  {fit(label, name_width)}".rstrip()

    first, note = heading(profile)
    lines = [fit(first, columns)]
    if (raised := raised_text(profile)) is not None:
        lines.extend(_wrapped(raised, columns))
    lines += [*_wrapped(note, columns), ""]
    lines.append(line(tuple(name for name, _ in NUMBER_COLUMNS), "waits", title))
    lines.extend(line(*row) for row in rows)
    if left := len(profile.entries) - len(entries):
        lines.append(fit(f"({left} more; --top {len(profile.entries)} shows them all)", columns))
    return lines


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def entry_object(profile: Profile, entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": entry.kind,
        "function": entry.name,
        "file": entry.file,
        "line": entry.line,
    }
    if profile.by == CALLSITE:
        item["site"] = {"file": entry.site_file, "line": entry.site_line}
    item.update(
        calls=entry.calls,
        failed=entry.failed,
        own_seconds=entry.own,
        own_share=profile.own_share(entry),
        total_seconds=entry.total,
        mean_seconds=entry.mean,
        max_seconds=entry.longest,
        waits={kind: seconds for kind, seconds in entry.waits},
    )
    return item


def profile_json(profile: Profile, top: int | None = None) -> str:
    """One JSON object (its shape: docs/profile.md)."""
    entries = profile.entries if top is None else profile.entries[:top]
    document = {
        "workflow_id": profile.workflow_id,
        "run": profile.run,
        "status": profile.status,
        "by": profile.by,
        "start": _iso(profile.start),
        "end": _iso(profile.end),
        "wall_seconds": profile.wall,
        "summed_seconds": profile.summed,
        "tasks": profile.tasks,
        "calls": profile.calls,
        "error": profile.error,
        "raised": None
        if profile.raised is None
        else {
            "function": profile.raised.name,
            "args": profile.raised.args,
            "task": profile.raised.task,
            "file": profile.raised.file,
            "line": profile.raised.line,
        },
        "note": CONCURRENCY_NOTE,
        "entries": [entry_object(profile, entry) for entry in entries],
        "more_entries": len(profile.entries) - len(entries),
    }
    return json.dumps(document, ensure_ascii=True)
