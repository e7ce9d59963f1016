"""A standalone SVG timeline of a workflow's last run: spans in, text out.

Two passes over the same spans keep memory bounded however long the trace (the caller
reads it twice): ``survey`` (``svg_layout``) learns the last run's time range, each task's
extent and the lanes they share; ``write_svg`` then draws each span as it comes.
Only the last run is drawn (a re-run appended to the trace is what one looks at; the
subtitle counts the others, and ``--format chrome`` shows every run).

Calls are bars nested by depth under the workflow's own bar, one per call (consecutive
calls from one line too), labelled with the function (cut to the bar's width), with a
tooltip naming the call with its arguments (``fetch_page(region='apac', page=2)``); slog
lines are blue diamonds, the error a red cross. Failed calls (the one that raised and the
calls it unwound through) are red; cancelled ones (left open in another task when the run
ended) grey and dashed; calls no record ended hatched, the heading saying how their run
stands (lost, unknown, still running: ``ending``). Everything from the trace is
XML-escaped.
A call shorter than half a pixel (most calls, in a long run) is drawn one pixel wide, once
per pixel column of its row, and markers closer than two pixels in a row are merged, so
the file stays small whatever the trace: an XML comment counts what was merged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TextIO
from xml.sax.saxutils import escape

from doeff_flow_core.escape import safe, safe_clip
from doeff_flow_core.timeline.spans import (
    CANCELLED,
    ERROR,
    EXCEPTION,
    INCOMPLETE,
    OK,
    SLOG,
    WORKFLOW,
    Span,
)
from flowctl.export.chrome import thread_name
from flowctl.export.ending import Ending
from flowctl.export.svg_layout import (
    CHAR_WIDTH,
    RIGHT,
    WIDTH,
    Lane,
    Survey,
    lane_chars,
    lane_ids,
    lane_names,
    left_of,
)
from flowctl.export.timeaxis import tick_label, ticks
from flowctl.render.timefmt import duration

ROW: Final = 18
BAR: Final = 14
LANE_PAD: Final = 5
MIN_BAR: Final = 0.5  # pixels
BAR_GAP: Final = 1.0  # pixels left blank at a bar's end (a quarter of a bar, at most)
MARKER_CELL: Final = 2  # pixels: one marker per cell of a row
MAX_TICKS: Final = 10
MAX_TITLE_CHARS: Final = 150
MAX_STACK_LINES: Final = 24  # of an error's stack in its marker's tooltip, innermost kept
PALETTE: Final = 5  # depth colours, repeating below depth 5

CSS: Final = """
text{font:11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:#1f2328}
.title{font-size:15px;font-weight:bold}.sub,.tick,.key{fill:#57606a}.tick{font-size:10px}
.errtext{fill:#cf222e}.grid{stroke:#d0d7de;stroke-width:.5}
.band0{fill:#f6f8fa}.band1{fill:#fff}.lname{font-weight:bold}.lids{fill:#57606a}
.c rect{stroke:#57606a;stroke-width:.5}
.d0 rect{fill:#d0d7de}.d1 rect{fill:#9ecae1}.d2 rect{fill:#a1d99b}.d3 rect{fill:#fdd49e}
.d4 rect{fill:#cbc9e2}.d5 rect{fill:#99d8c9}
.c.err rect{fill:#ff8182;stroke:#cf222e}
.c.inc rect{fill:url(#hatch);stroke:#6e7781;stroke-dasharray:3 2}
.c.cnc rect{fill:#e1e4e8;stroke:#6e7781;stroke-dasharray:2 2}.c.cnc text{fill:#57606a}
.slog{fill:#0969da;stroke:#fff;stroke-width:.5}.exc{stroke:#cf222e;stroke-width:2}
"""
DEFS: Final = (
    '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(45)"><rect width="6" height="6" fill="#eaeef2"/>'
    '<line x1="0" y1="0" x2="0" y2="6" stroke="#8c959f" stroke-width="2"/></pattern></defs>'
)
_NOT_XML: Final = re.compile("[\ufffe\uffff]")  # the characters XML forbids that safe() keeps
_STATUS_WORDS: Final = {OK: "completed", ERROR: "failed", CANCELLED: "cancelled"}
_STATUS_CSS: Final = {ERROR: " err", CANCELLED: " cnc", INCOMPLETE: " inc"}
NO_ENDING: Final = Ending("incomplete", "no terminal record")  # when the caller did not say


def text(value: str) -> str:
    """Untrusted text as XML character data: escaped, nothing that acts on a reader."""
    return escape(_NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", safe(value)))


def clipped(value: str, limit: int) -> str:
    return text(safe_clip(value, limit))


@dataclass(frozen=True)
class SvgStats:
    drawn: int
    narrow: int  # calls shorter than MIN_BAR where one was drawn already, left out
    merged: int  # markers that fell on a cell already marked


class _Canvas:
    """Pixels for one survey: where each lane and row lies, where a time falls."""

    def __init__(self, plan: Survey, top: float) -> None:
        self.plan = plan
        self.chars = lane_chars(plan.lanes)
        self.left = left_of(self.chars)
        self.scale = (WIDTH - self.left - RIGHT) / plan.total
        self.lane_top: list[float] = []
        y = top
        for lane in plan.lanes:
            self.lane_top.append(y)
            y += lane.rows * ROW + 2 * LANE_PAD
        self.bottom = y
        self.placed = {task: index for index, lane in enumerate(plan.lanes) for task in lane.tasks}

    def x(self, time: float) -> float:
        offset = min(max(time - self.plan.start, 0.0), self.plan.total)
        return self.left + offset * self.scale

    def row_top(self, span: Span) -> float | None:
        index = self.placed.get(span.task)
        if index is None:
            return None  # a task the first pass did not see, or left out
        lane = self.plan.lanes[index]
        if not lane.top <= span.depth <= lane.bottom:
            return None  # a depth the first pass did not see
        return self.lane_top[index] + LANE_PAD + (span.depth - lane.top) * ROW


def _tooltip(span: Span, ending: Ending) -> str:
    if span.kind == WORKFLOW:
        lines = [f"workflow {span.workflow_id}"]
    else:
        lines = [span.name if span.args is None else f"{span.name}({span.args})"]
    if span.file is not None:
        lines.append(f"{os.path.basename(span.file) or span.file}:{span.line}")
    steps = f"step {span.first_step}"
    if span.last_step != span.first_step:
        steps = f"steps {span.first_step}-{span.last_step}"
    lines.append(f"{duration(span.end - span.start)} · {steps} · {thread_name(span.task)}")
    if span.status == ERROR:
        lines.append(f"failed: {span.error or '-'}")
    elif span.status == CANCELLED:
        lines.append("cancelled: open when the run ended, abandoned (not failed)")
    elif span.status == INCOMPLETE:
        lines.append(f"{ending.word}: no record ended it")
    return "\n".join(clipped(line, 300) for line in lines)


def _lane_tooltip(lane: Lane) -> str:
    """A lone task's name and whole outermost call; every task of a shared lane, as far as
    a tooltip goes."""
    if len(lane.tasks) == 1:
        name = thread_name(lane.tasks[0])
        tip = name if lane.call is None else f"{name}: {lane.call}"
        return f"<title>{clipped(tip, 1200)}</title>"
    ids = lane_ids(lane)
    return f"<title>{clipped(f'{len(ids)} tasks: ' + ', '.join(map(str, ids)), 300)}</title>"


class SvgWriter:
    """The second pass: the picture of ``plan``'s run, written as its spans arrive."""

    def __init__(
        self, plan: Survey | None, workflow_id: str, out: TextIO, ending: Ending | None = None
    ) -> None:
        self._plan = plan
        self._ending = ending or NO_ENDING
        self._workflow_id = workflow_id
        self._out = out
        self._runs_seen = 0
        self._cells: set[tuple[int, int]] = set()
        self._slivers: set[tuple[int, int]] = set()  # (row, pixel) holding a short call
        self.drawn = 0
        self.narrow = 0
        self.merged = 0
        self._canvas: _Canvas | None = None

    def begin(self) -> None:
        plan = self._plan
        heading = self._heading()
        axis_top = 28 + 18 * len(heading)
        lanes_top = axis_top + 16
        canvas = _Canvas(plan, lanes_top) if plan is not None else None
        self._canvas = canvas
        bottom = canvas.bottom if canvas is not None else lanes_top
        height = round(bottom + 40)
        write = self._out.write
        write(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"'
            f' viewBox="0 0 {WIDTH} {height}">\n'
        )
        write(f"<style>{CSS}</style>\n{DEFS}\n")
        write(f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>\n')
        for index, (css, line) in enumerate(heading):
            write(f'<text class="{css}" x="12" y="{22 + 18 * index}">{line}</text>\n')
        self._legend(bottom + 26)
        if canvas is not None:
            self._lanes(canvas, axis_top)
            write('<g class="spans">\n')

    def _heading(self) -> list[tuple[str, str]]:
        plan = self._plan
        if plan is None:
            return [("title", f"{clipped(self._workflow_id, 80)} · no records")]
        ending = self._ending if plan.status == INCOMPLETE else None
        status = ending.word if ending else _STATUS_WORDS.get(plan.status, plan.status)
        title = f"{clipped(plan.workflow_id, 80)} · {text(status)} · {duration(plan.total)}"
        try:
            started = datetime.fromtimestamp(plan.start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (ValueError, OverflowError, OSError):  # a time no calendar date holds
            started = "?"
        which = f"run {plan.run}" if plan.run else "run"
        if plan.runs > 1:
            which += f" (the last of {plan.runs} runs)"
        tasks = plan.tasks
        sub = (
            f"{clipped(which, 80)} · started {started} · {plan.calls} call"
            f"{'' if plan.calls == 1 else 's'} in {tasks} task{'' if tasks == 1 else 's'}"
        )
        if plan.tasks_left_out:
            sub += f" ({plan.tasks_left_out} not drawn)"
        heading = [("title", title), ("sub", sub)]
        if plan.error:
            heading.append(("errtext", clipped(plan.error, MAX_TITLE_CHARS)))
        if ending:
            heading.append(("sub", clipped(f"{ending.word}: {ending.why}", MAX_TITLE_CHARS)))
        return heading

    def _lanes(self, canvas: _Canvas, axis_top: float) -> None:
        write = self._out.write
        plan = canvas.plan
        for index, lane in enumerate(plan.lanes):
            y = canvas.lane_top[index]
            height = lane.rows * ROW + 2 * LANE_PAD
            names = "".join(
                f'<text class="{"lids" if row else "lname"}" x="12"'
                f' y="{y + LANE_PAD + 11 + row * ROW:.1f}">{clipped(name, canvas.chars)}</text>'
                for row, name in enumerate(lane_names(lane))
            )
            write(
                f'<g class="lane">{_lane_tooltip(lane)}<rect class="band{index % 2}" x="0"'
                f' y="{y:.1f}" width="{WIDTH}" height="{height}"/>{names}</g>\n'
            )
        for offset in ticks(plan.total, MAX_TICKS):
            x = canvas.left + offset * canvas.scale
            write(
                f'<line class="grid" x1="{x:.1f}" y1="{axis_top + 4}" x2="{x:.1f}"'
                f' y2="{canvas.bottom:.1f}"/><text class="tick" x="{x:.1f}" y="{axis_top}"'
                f' text-anchor="middle">{tick_label(offset, plan.total)}</text>\n'
            )

    def _legend(self, y: float) -> None:
        sample = '<g class="c {css}"><rect x="{x}" y="{top}" width="22" height="10"/></g>'
        unended = "no end recorded"
        if self._plan is not None and self._plan.status == INCOMPLETE:
            unended += f" ({text(self._ending.word)})"
        items = (
            (sample.replace("{css}", "d1"), "call"),
            (sample.replace("{css}", "err"), "failed"),
            (sample.replace("{css}", "cnc"), "cancelled"),
            (sample.replace("{css}", "inc"), unended),
            ('<path class="slog" d="{diamond}"/>', "slog"),
            ('<path class="exc" d="{cross}"/>', "error"),
        )
        x = 12
        for shape, label in items:
            centre = x + 11
            self._out.write(
                shape.format(
                    x=x,
                    top=y - 9,
                    diamond=_diamond(centre, y - 4),
                    cross=_cross(centre, y - 4),
                )
                + f'<text class="key" x="{x + 28}" y="{y}">{label}</text>\n'
            )
            x += 28 + 7 * len(label) + 24

    def add(self, span: Span) -> None:
        canvas = self._canvas
        in_run = self._runs_seen == (self._plan.runs - 1 if self._plan else -1)
        if span.kind == WORKFLOW:
            self._runs_seen += 1
        if canvas is None or not in_run:
            return
        top = canvas.row_top(span)
        if top is None:
            self.narrow += 1
            return
        left = canvas.x(span.start)
        right = left + self._bar(canvas, span, top)
        for event in span.events:
            if event.kind not in (SLOG, EXCEPTION):
                continue
            # On its call's bar: a task's calls may end a moment before the run's error.
            x = min(max(canvas.x(event.time), left), right)
            cell = (round(top), int(x // MARKER_CELL))
            if cell in self._cells:
                self.merged += 1
                continue
            self._cells.add(cell)
            if event.kind == SLOG:
                fields = " ".join(f"{key}={value}" for key, value in event.attributes.items())
                tip = clipped(f"{event.name} {fields}".strip(), 300)
                shape = f'<path class="slog" d="{_diamond(x, top + BAR)}">'
            else:
                kind = event.attributes.get("exception.type", "error")
                message = event.attributes.get("exception.message", "")
                stack = event.attributes.get("exception.stacktrace", "").split("\n")
                lines = [f"{kind}: {message}", *stack[:-1][-MAX_STACK_LINES:]]
                tip = "\n".join(clipped(line, 300) for line in lines)
                shape = f'<path class="exc" d="{_cross(x, top + BAR / 2)}">'
            self._out.write(f"{shape}<title>{tip}</title></path>\n")

    def _bar(self, canvas: _Canvas, span: Span, top: float) -> float:
        """Draws ``span``'s bar; its width (the pixel's, for a call left out there)."""
        left, right = canvas.x(span.start), canvas.x(span.end)
        width = right - left
        if width < MIN_BAR:
            sliver = (round(top), int(left))
            if sliver in self._slivers:
                self.narrow += 1
                return 1.0
            self._slivers.add(sliver)
            width = 1.0
        else:
            # One call ends where the next from the same line starts: a hairline between
            # them keeps two calls from reading as one bar.
            width -= min(BAR_GAP, width / 4)
        self.drawn += 1
        shade = (span.depth - 1) % PALETTE + 1 if span.depth else 0
        css = f"c d{shade}{_STATUS_CSS.get(span.status, '')}"
        label = ""
        fits = int((width - 6) / CHAR_WIDTH)
        if fits >= 2:
            label = f'<text x="{left + 3:.1f}" y="{top + 11:.1f}">{clipped(span.name, fits)}</text>'
        self._out.write(
            f'<g class="{css}"><title>{_tooltip(span, self._ending)}</title><rect x="{left:.1f}"'
            f' y="{top:.1f}" width="{width:.1f}" height="{BAR}" rx="2"/>{label}</g>\n'
        )
        return width

    def end(self) -> None:
        write = self._out.write
        if self._canvas is not None:
            write("</g>\n")
        write(
            f"<!-- {self.drawn} calls drawn; {self.narrow} left out (shorter than half a"
            f" pixel where another already was, or in a task not drawn); {self.merged} markers"
            " merged into their neighbours -->\n</svg>\n"
        )

    def stats(self) -> SvgStats:
        return SvgStats(self.drawn, self.narrow, self.merged)


def _diamond(x: float, y: float, radius: float = 3.5) -> str:
    return f"M{x:.1f},{y - radius:.1f}l{radius},{radius}l-{radius},{radius}l-{radius},-{radius}z"


def _cross(x: float, y: float, radius: float = 3.5) -> str:
    size = 2 * radius
    return f"M{x - radius:.1f},{y - radius:.1f}l{size},{size}m0,-{size}l-{size},{size}"


def write_svg(
    plan: Survey | None,
    workflow_id: str,
    spans: Iterable[Span],
    out: TextIO,
    ending: Ending | None = None,
) -> SvgStats:
    """The second pass: draws the run ``plan`` describes from ``spans`` (the same spans
    the first pass saw) on ``out``; ``ending`` says how the run stands when no terminal
    record ended it."""
    writer = SvgWriter(plan, workflow_id, out, ending)
    writer.begin()
    for span in spans:
        writer.add(span)
    writer.end()
    return writer.stats()
