"""The SVG timeline's layout: what the first pass over a run's spans learns, and lanes.

``survey`` learns the last run's time range and each task's extent (first start, last end,
shallowest and deepest call), so memory grows with tasks, not records. Tasks share lanes as
Perfetto packs async slices: the root has the first lane, then each spawned task, by start,
takes the first lane free by then (a few pixels after its last task ends, so neighbours
stay apart). A fan-out of thousands of short tasks fits in as many lanes as ran at once. A
lane of one task is named by the task's outermost call with its arguments
(``fetch_region(region='apac', pages=4)``), so tasks running the same function are told
apart at a glance; a shared lane counts its tasks and lists the first. The lane names'
column is as wide as the longest name needs, up to LANE_CHARS_MOST characters.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from doeff_flow_core.timeline.spans import WORKFLOW, Span
from flowctl.export.chrome import thread_name

WIDTH: Final = 1200
CHAR_WIDTH: Final = 7.0  # 11px monospace is about 6.6px a character; a little spare
LEFT: Final = 96  # the lane names' column at its narrowest
RIGHT: Final = 40  # room for the last tick's label
LANE_GAP: Final = 3  # pixels between tasks sharing a lane
LANE_CHARS: Final = 11  # a shared lane's name's characters (its tasks' numbers)
LANE_CHARS_MOST: Final = 34  # a lane name's characters at most: a call cut after that
MAX_LANES: Final = 100  # a bound should tasks overlap that much
KEPT_CALL_CHARS: Final = 1000  # of a task's outermost call, for its lane's tooltip


def left_of(chars: int) -> int:
    """Where the plot starts when lane names are ``chars`` characters long."""
    return max(LEFT, round(12 + chars * CHAR_WIDTH + 12))


# Lanes are packed before their names' width is known: gaps are measured on the narrowest
# plot, so they are at least LANE_GAP pixels on any.
NARROWEST_PLOT: Final = WIDTH - left_of(LANE_CHARS_MOST) - RIGHT


def call_label(span: Span) -> str:
    """A call as its lane shows it: ``name(args)`` when its arguments were recorded."""
    label = span.name if span.args is None else f"{span.name}({span.args})"
    return label[:KEPT_CALL_CHARS]


class Extent(NamedTuple):
    """Where one spawned task's calls reach: first start, last end, depths drawn, and
    its outermost call (the first to end at the shallowest depth)."""

    task: int
    start: float
    end: float
    top: int
    bottom: int
    call: str | None = None


def reach(extent: Extent | None, task: int, span: Span) -> Extent:
    """``extent`` (None before ``task``'s first call) grown to hold ``span``, its call."""
    if extent is None:
        return Extent(task, span.start, span.end, span.depth, span.depth, call_label(span))
    # A call ends after the calls it made: the outermost comes last, and rarely.
    shallower = span.depth < extent.top
    return Extent(
        task,
        min(extent.start, span.start),
        max(extent.end, span.end),
        span.depth if shallower else extent.top,
        max(extent.bottom, span.depth),
        call_label(span) if shallower else extent.call,
    )


@dataclass(frozen=True)
class Lane:
    """One lane: its tasks (the root lane's is None), in the order they start, and the
    depths drawn in it, ``top`` (the root lane's 0 is the workflow's own bar) to
    ``bottom``; a lane of one task knows the task's outermost call."""

    tasks: tuple[int | None, ...]
    top: int
    bottom: int
    call: str | None = None

    @property
    def rows(self) -> int:
        return self.bottom - self.top + 1


@dataclass(frozen=True)
class Packing:
    lanes: tuple[Lane, ...]
    left_out: int  # tasks that found no free lane among the most allowed


def pack(extents: Iterable[Extent], gap: float, limit: int) -> Packing:
    """Lanes for ``extents``: by start, each task takes the lowest lane free by then (its
    last task ended at least ``gap`` before), or a new one while there are fewer than
    ``limit``; a task that finds none is left out."""
    free: list[int] = []  # lanes free now, lowest first
    busy: list[tuple[float, int]] = []  # (when a lane frees, the lane), soonest first
    groups: list[list[Extent]] = []
    left_out = 0
    for extent in sorted(extents, key=lambda e: (e.start, e.task)):
        while busy and busy[0][0] <= extent.start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            index = heapq.heappop(free)
        elif len(groups) < limit:
            index = len(groups)
            groups.append([])
        else:
            left_out += 1
            continue
        groups[index].append(extent)
        heapq.heappush(busy, (extent.end + gap, index))
    lanes = tuple(
        Lane(
            tuple(extent.task for extent in group),
            min(extent.top for extent in group),
            max(extent.bottom for extent in group),
            group[0].call if len(group) == 1 else None,
        )
        for group in groups
    )
    return Packing(lanes, left_out)


def lane_names(lane: Lane) -> list[str]:
    """A lane's name, a line a row. One task's: its outermost call, beside that call's
    row (the root's second, under its workflow bar), and "task 3" or "root" on another
    row when there is one. Shared: "tasks 1, 10", else the count of its tasks with as many
    of their numbers as fit on the next row ("1, 10, 19 …")."""
    if len(lane.tasks) == 1:
        name = thread_name(lane.tasks[0])
        if lane.call is None:
            return [name]
        if lane.tasks[0] is None:
            return [name, lane.call] if lane.rows > 1 else [name]
        return [lane.call, name] if lane.rows > 1 else [lane.call]
    ids = lane_ids(lane)
    listed = ", ".join(map(str, ids))
    if len(f"tasks {listed}") <= LANE_CHARS:
        return [f"tasks {listed}"]
    count = f"{len(ids)} tasks"
    return [count, _first_ids(ids, LANE_CHARS)] if lane.rows > 1 else [count]


def lane_chars(lanes: Iterable[Lane]) -> int:
    """How many characters the lane names' column holds: the longest name, within bounds."""
    longest = max((len(name) for lane in lanes for name in lane_names(lane)), default=0)
    return min(max(longest, LANE_CHARS), LANE_CHARS_MOST)


def lane_ids(lane: Lane) -> list[int]:
    return sorted(task for task in lane.tasks if task is not None)


def _first_ids(ids: Sequence[int], limit: int) -> str:
    """As many of ``ids`` as fit in ``limit`` characters with " …" after them."""
    shown = str(ids[0])
    for task in ids[1:]:
        longer = f"{shown}, {task}"
        if len(longer) + 2 > limit:
            break
        shown = longer
    return shown + " …"


@dataclass(frozen=True)
class Survey:
    """What the first pass learned about the run to draw (the trace's last)."""

    workflow_id: str
    run: str
    runs: int
    start: float
    end: float
    status: str
    error: str | None
    lanes: tuple[Lane, ...]
    calls: int
    tasks: int  # the root and every spawned task with a call
    tasks_left_out: int = 0

    @property
    def total(self) -> float:
        return max(self.end - self.start, 1e-6)


class _Surveyor:
    def __init__(self) -> None:
        self.runs = 0
        self.calls = 0
        self.root_bottom = 0
        self.root_top = 0  # the depth of the root task's outermost call, once seen
        self.root_call: str | None = None
        self.extents: dict[int, Extent] = {}
        self.last: Survey | None = None

    def add(self, span: Span) -> None:
        if span.kind != WORKFLOW:
            self.calls += 1
            if span.task is None:
                self.root_bottom = max(self.root_bottom, span.depth)
                if not self.root_top or span.depth < self.root_top:
                    self.root_top, self.root_call = span.depth, call_label(span)
            else:
                self.extents[span.task] = reach(self.extents.get(span.task), span.task, span)
            return
        self.runs += 1  # a run's workflow span is its last
        total = max(span.end - span.start, 1e-6)
        packing = pack(self.extents.values(), LANE_GAP * total / NARROWEST_PLOT, MAX_LANES - 1)
        self.last = Survey(
            workflow_id=span.workflow_id,
            run=span.run,
            runs=self.runs,
            start=span.start,
            end=span.end,
            status=span.status,
            error=span.error,
            lanes=(Lane((None,), 0, self.root_bottom, self.root_call), *packing.lanes),
            calls=self.calls,
            tasks=1 + len(self.extents),
            tasks_left_out=packing.left_out,
        )
        self.calls = 0
        self.root_bottom = self.root_top = 0
        self.root_call = None
        self.extents.clear()


def survey(spans: Iterable[Span]) -> Survey | None:
    """The first pass: the last run's shape (None when there is no run at all)."""
    surveyor = _Surveyor()
    for span in spans:
        surveyor.add(span)
    return surveyor.last
