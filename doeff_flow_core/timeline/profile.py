"""Profiles: where the time of a run went, by function or by call site.

Pure and streaming: spans in (``spans_of``'s order, children before parents), one
``Profile`` per run out. What is kept while spans arrive is bounded by the calls open at
once (one sum of child time per open call that has ended children) and the distinct
functions (or call sites) seen, never by the length of the trace.

Time is counted per task. A call's *own* time is its duration less the durations of the
calls it made in its own task; the calls of a task it spawned are not its children here,
they count for their own functions. So the run's *summed* time (every call's own time plus
the workflow span's own time) adds up the time of every task: tasks running at once each
count theirs, and a function's total can exceed the run's wall time, which is counted once.
Shares (``own_share``) are of the summed time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from doeff_flow_core.timeline.spans import CALL, ERROR, WORKFLOW, Span

FUNCTION: Final = "function"
CALLSITE: Final = "callsite"
BY_CHOICES: Final = (FUNCTION, CALLSITE)
MAX_ERRORS: Final = 64  # distinct errors whose raising call is remembered in one run
By = Literal["function", "callsite"]

CONCURRENCY_NOTE: Final = (
    "tasks running at once each count their own time, so the summed time and a function's "
    "total can exceed the wall time (counted once); shares are of the summed time"
)


@dataclass(frozen=True)
class Entry:
    """One function (``by="function"``: its name and file) or one call site
    (``by="callsite"``: the caller's file and line, and the function called); the run's
    own row has kind WORKFLOW and the workflow id as its name."""

    kind: str  # CALL or WORKFLOW
    name: str
    file: str | None
    line: int | None  # the lowest line its calls were first seen at
    site_file: str | None  # by call site: where the calls were made
    site_line: int | None
    calls: int
    total: float  # seconds: the sum of its calls' durations
    own: float  # seconds: total less its calls' time in calls of their own task
    longest: float  # seconds: its longest call
    waits: tuple[tuple[str, float], ...]  # seconds in its own effects by type, most first
    failed: int = 0  # its calls that failed (raised, or an error unwound through them)

    @property
    def mean(self) -> float:
        return self.total / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Raised:
    """The call a failed run's error was raised in: the failed call that ended first (the
    error then unwound through the others), the innermost of those that ended with it."""

    name: str
    args: str | None
    task: int | None  # None: the root task
    file: str | None
    line: int | None  # where the call was first seen (its first effect's line)
    error: str


@dataclass(frozen=True)
class Profile:
    """One run: its wall time, the tasks' summed time, and its entries by own time."""

    workflow_id: str
    run: str
    status: str  # the workflow span's: ok, error, incomplete, cancelled
    by: str
    start: float  # seconds since the epoch
    end: float
    summed: float  # seconds: every entry's own time added up
    tasks: int  # the root task and every spawned task that made a call
    calls: int  # calls of @do functions (the workflow span not counted)
    entries: tuple[Entry, ...]  # by own time, most first
    error: str | None = None  # a failed run's error
    raised: Raised | None = None  # where it was raised, when a call's span says so

    @property
    def wall(self) -> float:
        return self.end - self.start

    def own_share(self, entry: Entry) -> float:
        """``entry``'s own time as a fraction of the summed time (0 when nothing took time)."""
        return entry.own / self.summed if self.summed > 0 else 0.0


def in_parent_task(span: Span) -> bool:
    """Whether ``span`` ran in its parent's task: a nested call, or the root task's
    outermost call under the workflow span (a spawned task's outermost call did not)."""
    return span.spawned_by is None and (span.depth > 1 or span.task is None)


class OwnTime:
    """Own times of spans arriving children first: per open parent, the time of its
    children that ran in its task (popped when the parent arrives)."""

    __slots__ = ("_inner",)

    def __init__(self) -> None:
        self._inner: dict[int, float] = {}

    def own(self, span: Span) -> float:
        """``span``'s own time (call once per span, in arrival order)."""
        duration = span.end - span.start
        inner = self._inner.pop(span.span_id, 0.0)
        if span.parent_id is not None and in_parent_task(span):
            self._inner[span.parent_id] = self._inner.get(span.parent_id, 0.0) + duration
        return max(duration - inner, 0.0)

    def clear(self) -> None:
        self._inner.clear()


class _Sums:
    """An entry while spans arrive."""

    __slots__ = ("calls", "failed", "kind", "line", "longest", "own", "total", "waits")

    def __init__(self, kind: str, line: int | None) -> None:
        self.kind = kind
        self.line = line
        self.failed = 0
        self.calls = 0
        self.total = 0.0
        self.own = 0.0
        self.longest = 0.0
        self.waits: dict[str, float] = {}


_Key = tuple[str, str, str | None, str | None, int | None]  # kind, name, file, site


class Profiler:
    """Spans in, a ``Profile`` out at the end of each run (its workflow span)."""

    def __init__(self, by: By = "function") -> None:
        if by not in BY_CHOICES:
            raise ValueError(f"by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
        self.by = by
        self._own = OwnTime()
        self._sums: dict[_Key, _Sums] = {}
        self._tasks = 1
        self._calls = 0
        # Per error: the failed call it was raised in, so far (see Raised).
        self._raised: dict[str, tuple[tuple[float, bool, int], Span]] = {}

    def add(self, span: Span) -> Profile | None:
        """Count ``span``; the run's profile when it is the run's workflow span."""
        own = self._own.own(span)
        duration = span.end - span.start
        if span.kind == CALL:
            self._calls += 1
            if span.depth == 1 and span.task is not None:
                self._tasks += 1
        if self.by == CALLSITE and span.kind == CALL:
            key: _Key = (span.kind, span.name, span.file, span.site_file, span.site_line)
        else:
            key = (span.kind, span.name, span.file, None, None)
        sums = self._sums.get(key)
        if sums is None:
            sums = self._sums[key] = _Sums(span.kind, span.line)
        elif span.line is not None and (sums.line is None or span.line < sums.line):
            sums.line = span.line
        sums.calls += 1
        sums.total += duration
        sums.own += own
        if duration > sums.longest:
            sums.longest = duration
        waits = sums.waits
        for effect, seconds in span.waits:
            waits[effect] = waits.get(effect, 0.0) + seconds
        if span.status == ERROR and span.kind == CALL:
            sums.failed += 1
            # Ended first; of those that ended together, in a spawned task, deepest.
            rank = (span.end, span.task is None, -span.depth)
            error = span.error or ""
            best = self._raised.get(error)
            if (best is None and len(self._raised) < MAX_ERRORS) or (best and rank < best[0]):
                self._raised[error] = (rank, span)
        if span.kind != WORKFLOW:
            return None
        profile = self._profile(span)
        self._own.clear()
        self._sums.clear()
        self._tasks = 1
        self._calls = 0
        self._raised.clear()
        return profile

    def _profile(self, workflow: Span) -> Profile:
        entries = [
            Entry(
                kind=sums.kind,
                name=name,
                file=file,
                line=sums.line,
                site_file=site_file,
                site_line=site_line,
                calls=sums.calls,
                total=sums.total,
                own=sums.own,
                longest=sums.longest,
                waits=tuple(sorted(sums.waits.items(), key=lambda item: (-item[1], item[0]))),
                failed=sums.failed,
            )
            for (_, name, file, site_file, site_line), sums in self._sums.items()
        ]
        entries.sort(key=lambda entry: (-entry.own, -entry.total, entry.name, entry.file or ""))
        return Profile(
            workflow_id=workflow.workflow_id,
            run=workflow.run,
            status=workflow.status,
            by=self.by,
            start=workflow.start,
            end=workflow.end,
            summed=sum(entry.own for entry in entries),
            tasks=self._tasks,
            calls=self._calls,
            entries=tuple(entries),
            error=workflow.error if workflow.status == ERROR else None,
            raised=self._raised_in(workflow),
        )

    def _raised_in(self, workflow: Span) -> Raised | None:
        if workflow.status != ERROR:
            return None
        best = self._raised.get(workflow.error or "")
        if best is None:
            return None
        span = best[1]
        return Raised(span.name, span.args, span.task, span.file, span.line, span.error or "")


def profiles_of(spans: Iterable[Span], by: By = "function") -> Iterator[Profile]:
    """A profile of each run in ``spans`` (``spans_of``'s output), as each run ends."""
    profiler = Profiler(by)
    for span in spans:
        profile = profiler.add(span)
        if profile is not None:
            yield profile


class NoRun(ValueError):
    """The spans hold no run (an empty trace)."""

    def __init__(self) -> None:
        super().__init__("no run to profile: the spans hold no workflow span")


def profile_of(spans: Iterable[Span], by: By = "function") -> Profile:
    """The profile of the last run in ``spans`` (``spans_of``'s output, one workflow's);
    NoRun when there is none."""
    last: Profile | None = None
    for last in profiles_of(spans, by):  # noqa: B007 - the last one is kept
        pass
    if last is None:
        raise NoRun()
    return last
