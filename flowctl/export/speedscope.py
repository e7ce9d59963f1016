"""Spans as a speedscope file (https://www.speedscope.app/file-format-schema.json): one
*evented* profile per task of each run (the root task's holds the workflow span), its
calls as open and close events in microseconds since the run started; frames (function,
file, line) shared by every profile.

speedscope wants each profile's events in time order and properly nested, while spans
arrive as they end, children first and tasks interleaved: so a run's calls are kept,
compactly, until the run's workflow span arrives, then each task's profile is written.
Memory grows with the calls of one run (a few dozen bytes each); the frames are kept for
the whole file (one per distinct function).
"""

from __future__ import annotations

import importlib.metadata
import json
from array import array
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

from doeff_flow_core.timeline.spans import WORKFLOW, Span
from flowctl.export.folded import collector_paused

SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"
UNIT: Final = "microseconds"
OPEN: Final = "O"
CLOSE: Final = "C"


class _Calls:
    """One task's calls in one run, as parallel arrays (start, end, frame, ids)."""

    __slots__ = ("depth", "end", "frame", "parent", "span", "start")

    def __init__(self) -> None:
        self.start = array("q")
        self.end = array("q")
        self.frame = array("l")
        self.span = array("q")
        self.parent = array("q")  # -1: none
        self.depth = array("l")


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def task_events(calls: _Calls, base: int) -> Iterator[tuple[str, int, int]]:
    """The task's calls as open/close events ``(type, frame, at)``, in time order and
    nested: a call opens when the call before it in time order is its caller (or it is the
    task's outermost) and closes before the next call not its own opens; no event is
    earlier than the one before it (the trace's clock has milliseconds, and a child may
    end with its caller)."""
    order = sorted(
        range(len(calls.start)), key=lambda i: (calls.start[i], calls.depth[i], calls.span[i])
    )
    stack: list[int] = []
    on_stack: set[int] = set()
    last = 0
    for index in order:
        parent = calls.parent[index]
        while stack and (parent not in on_stack or calls.span[stack[-1]] != parent):
            done = stack.pop()
            on_stack.discard(calls.span[done])
            last = max(calls.end[done] - base, last)
            yield CLOSE, calls.frame[done], last
        last = max(calls.start[index] - base, last)
        yield OPEN, calls.frame[index], last
        stack.append(index)
        on_stack.add(calls.span[index])
    while stack:
        done = stack.pop()
        last = max(calls.end[done] - base, last)
        yield CLOSE, calls.frame[done], last


class SpeedscopeWriter:
    """Writes one speedscope file to ``out``, a run at a time."""

    def __init__(self, out: TextIO, name: str, exporter: str) -> None:
        self._out = out
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._name = name
        self._exporter = exporter
        self._frames: dict[tuple[str, str | None], int] = {}
        self._frame_lines: list[int | None] = []
        self._tasks: dict[int | None, _Calls] = {}
        self._first = True
        self.spans = 0
        self.runs = 0
        self.profiles = 0

    def begin(self) -> None:
        head = {"$schema": SCHEMA, "name": self._name, "exporter": self._exporter}
        self._out.write(self._encode(head)[:-1] + ',"activeProfileIndex":0,"profiles":[')

    def _frame(self, span: Span) -> int:
        key = (span.name, span.file)
        index = self._frames.get(key)
        if index is None:
            index = self._frames[key] = len(self._frame_lines)
            self._frame_lines.append(span.line)
        elif span.line is not None:
            known = self._frame_lines[index]
            if known is None or span.line < known:
                self._frame_lines[index] = span.line
        return index

    def add(self, span: Span) -> None:
        self.spans += 1
        calls = self._tasks.get(span.task)
        if calls is None:
            calls = self._tasks[span.task] = _Calls()
        calls.start.append(micros(span.start))
        calls.end.append(micros(span.end))
        calls.frame.append(self._frame(span))
        calls.span.append(span.span_id)
        calls.parent.append(-1 if span.parent_id is None else span.parent_id)
        calls.depth.append(span.depth)
        if span.kind == WORKFLOW:  # a run's last span
            self._write_run(span)

    def _write_run(self, workflow: Span) -> None:
        self.runs += 1
        base = micros(workflow.start)
        end = micros(workflow.end) - base
        run = workflow.run
        label = f"{workflow.workflow_id} run {run}" if run else workflow.workflow_id
        # The root task first (it holds the workflow span), then the tasks in number order.
        for task in sorted(self._tasks, key=lambda task: -1 if task is None else task):
            name = f"{label} · {'root' if task is None else f'task {task}'}"
            head = {"type": "evented", "name": name, "unit": UNIT, "startValue": 0}
            if not self._first:
                self._out.write(",\n")
            self._first = False
            write = self._out.write
            write(self._encode(head)[:-1] + ',"events":[')
            last = 0
            separator = ""
            for kind, frame, at in task_events(self._tasks[task], base):
                write(f'{separator}{{"type":"{kind}","frame":{frame},"at":{at}}}')
                separator = ","
                last = at
            write(f'],"endValue":{max(end, last)}}}')
            self.profiles += 1
        self._tasks.clear()

    def end(self) -> None:
        frames = []
        for (name, file), index in self._frames.items():
            frame: dict[str, object] = {"name": name}
            if file is not None:
                frame["file"] = file
            line = self._frame_lines[index]
            if line is not None:
                frame["line"] = line
            frames.append(frame)
        self._out.write('],"shared":' + self._encode({"frames": frames}) + "}\n")


def exporter_name() -> str:
    """``doeff-flow 0.1.0``: who wrote the file (speedscope shows it)."""
    try:
        return f"doeff-flow {importlib.metadata.version('doeff-flow')}"
    except importlib.metadata.PackageNotFoundError:
        return "doeff-flow"


def write_speedscope(spans: Iterable[Span], out: TextIO, name: str) -> SpeedscopeWriter:
    """Every run of ``spans`` as one speedscope file named ``name`` on ``out``."""
    writer = SpeedscopeWriter(out, name, exporter_name())
    writer.begin()
    with collector_paused():
        for span in spans:
            writer.add(span)
    writer.end()
    return writer
