"""Spans as folded stacks (Brendan Gregg's format, read by flamegraph.pl, inferno and
speedscope): one line per distinct stack, ``workflow;build_report;fetch_region;fetch_page
1234``, with the own time spent there in whole microseconds.

The last run of the trace is folded, the run ``flowctl profile`` shows by default, and the
lines add up to its summed time (``doeff_flow_core.timeline.profile``): a call's own time
is its duration less its calls in its own task. A spawned task's stack hangs under the
stack of the call that spawned it, its time counted once, in its own frames.

Spans arrive children first, before their callers' names are known, so each open call
keeps the stacks below it (relative, aggregated) and hands them to its caller when it
ends: memory is bounded by the open calls and the distinct stacks, not by the trace.
A task that outlives the call that spawned it hangs under that call through a bounded
memory of recently ended calls; one whose spawner is forgotten hangs under the workflow.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

from doeff_flow_core.timeline.profile import OwnTime
from doeff_flow_core.timeline.spans import WORKFLOW, Span

RECENT_CALLS: Final = 4096  # ended calls remembered, for tasks that outlive their spawner

# Separators of the format (``;`` between frames, a space before the count), line breaks,
# and whatever could act on a terminal; ``%`` too, so that the escaping reads back.
_UNSAFE = re.compile(
    "[%;\\s\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ufeff\ud800-\udfff]"
)


def _percent(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"%{code:02X}" if code < 0x100 else f"%u{code:04X}"


def frame_name(name: str) -> str:
    """``name`` as one frame of a folded stack: no ``;``, space, newline or control
    character (each written ``%XX``, or ``%uXXXX`` past Latin-1), never empty."""
    return _UNSAFE.sub(_percent, name) or "%00"


Stacks = dict[tuple[str, ...], float]


class Folder:
    """Spans in; each run's stacks (frame names outermost first, own seconds) at its
    workflow span."""

    def __init__(self) -> None:
        self._own = OwnTime()
        self._below: dict[int, Stacks] = {}  # open call -> the stacks under it, relative
        self._ended: OrderedDict[int, tuple[str, int | None]] = OrderedDict()
        self._names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        escaped = self._names.get(name)
        if escaped is None:
            if len(self._names) > 65536:
                self._names.clear()
            escaped = self._names[name] = frame_name(name)
        return escaped

    def add(self, span: Span) -> Stacks | None:
        own = self._own.own(span)
        name = self._name(span.name)
        stacks: Stacks = {(name,): own}
        below = self._below.pop(span.span_id, None)
        if below:
            for path, seconds in below.items():
                stacks[(name, *path)] = seconds
        if span.kind == WORKFLOW:
            # What hangs under calls never seen to end (forgotten spawners) hangs here.
            for path_below in self._below.values():
                for path, seconds in path_below.items():
                    whole = (name, *path)
                    stacks[whole] = stacks.get(whole, 0.0) + seconds
            self._own.clear()
            self._below.clear()
            self._ended.clear()
            return stacks
        # A task whose spawner has ended: climb the ended calls to one still open.
        parent = span.parent_id
        prefix: tuple[str, ...] = ()
        while parent is not None and parent in self._ended:
            parent_name, grandparent = self._ended[parent]
            prefix = (parent_name, *prefix)
            parent = grandparent
        if parent is not None:
            target = self._below.setdefault(parent, {})
            for path, seconds in stacks.items():
                whole = (*prefix, *path) if prefix else path
                target[whole] = target.get(whole, 0.0) + seconds
        self._ended[span.span_id] = (name, span.parent_id)
        if len(self._ended) > RECENT_CALLS:
            self._ended.popitem(last=False)
        return None


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block that streams a trace: the records,
    spans and stacks made on the way form no cycles (reference counting frees them), and
    the collector's passes over them cost about a sixth of the time."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def folded_lines(stacks: Stacks) -> list[str]:
    """``a;b;c 1234`` per stack with at least a microsecond of own time, sorted."""
    lines = []
    for path, seconds in stacks.items():
        count = micros(seconds)
        if count > 0:
            lines.append(f"{';'.join(path)} {count}")
    lines.sort()
    return lines


def last_run_stacks(spans: Iterable[Span]) -> tuple[Stacks | None, int, int]:
    """The last run's stacks (None when there is no run), the spans read and the runs."""
    folder = Folder()
    last: Stacks | None = None
    count = runs = 0
    with collector_paused():
        for span in spans:
            count += 1
            stacks = folder.add(span)
            if stacks is not None:
                last = stacks
                runs += 1
    return last, count, runs


def write_folded(spans: Iterable[Span], out: TextIO) -> tuple[int, int, int]:
    """The last run of ``spans`` folded onto ``out``; the lines written, spans and runs."""
    stacks, count, runs = last_run_stacks(spans)
    lines = folded_lines(stacks) if stacks is not None else []
    out.write("".join(line + "\n" for line in lines))
    return len(lines), count, runs
