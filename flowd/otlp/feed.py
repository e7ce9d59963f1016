"""Spans from the records flowd reads: one ``SpanBuilder`` per workflow with a run open.

``SpanFeed.feed`` gets every ``Update`` the index reads, on the event loop, and hands the
spans each new record ended to ``emit`` (records as the index parsed them: nothing is
parsed twice). A builder exists only while a run is open and holds only that run's open
calls.

flowd exports what ends while it runs. A trace found already written (flowd starting, a
root added) comes as its latest record only; when that record says the run is still
going, the run's open calls are rebuilt by replaying its records from the file
(``rebuild``, in a worker thread: ``request`` asks for it), so the spans that end later
have their true start times and the ids ``flowctl export`` gives them, and the spans that
ended before are not emitted. A new trace too big to read at once (one that grew past
the index's first read while flowd was busy) comes as its latest record too: its
latest run began while flowd ran, so it is replayed whole and every span it ended is
emitted (they would otherwise be lost without being counted anywhere). Records read
meanwhile wait for the rebuild (past MAX_WAITING the oldest are let go: the rebuild read
those from the file; past MAX_WAITING_TOTAL for all runs together, the run is skipped).
A run met in its middle with no way to rebuild it (its start rotated away, its writer
gone) is skipped: spans numbered from its middle would take other spans' ids. A run whose writer
is killed gets no terminal record: ``sweep`` ends it, its open calls incomplete.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from doeff_flow_core.records import LOST, RUNNING
from doeff_flow_core.timeline.spans import Span, SpanBuilder
from doeff_flow_core.tracefiles.reading import RecordStream
from flowd.errors import SweepFailed
from flowd.index import Entry, Liveness, Update, read_to_end
from flowd.otlp.queue import WEIGHT_LIMIT, SpanQueue
from flowd.stored import StoredRecord, parsed

MAX_WAITING: Final = 10_000  # records kept while a run is rebuilt
# Records kept while runs are rebuilt, all runs together (flowd starting among many busy
# workflows): past it, the run whose records just came is skipped instead.
MAX_WAITING_TOTAL: Final = 50_000
WHOLE_RUN: Final = sys.maxsize  # as a step: every record of the run
FIRST_STEP: Final = 1  # a run's first record (the writer counts from 1)
CHECK_EVERY: Final = 1024  # records replayed between two looks at cancellation

After = tuple[str | None, int]  # records of this run up to this step are not fed


@dataclass(frozen=True)
class Replay:
    """A run to rebuild, found at its record ``latest`` (spans ended by then are old,
    unless ``whole``: the run began while flowd ran, and each of its spans is new)."""

    entry: Entry
    path: str
    latest: StoredRecord
    whole: bool = False

    @property
    def run(self) -> str | None:
        return self.latest.run

    @property
    def step(self) -> int:
        return self.latest.step


@dataclass(frozen=True)
class Rebuilt:
    """A run replayed: its open calls (None when it ended, or could not be rebuilt), the
    spans that ended after the step it was found at (within the queue's bounds; the
    oldest ``dropped`` more were let go), and the last step read."""

    builder: SpanBuilder | None
    spans: tuple[Span, ...] = ()
    dropped: int = 0
    last_step: int = WHOLE_RUN


def rebuild(
    replay: Replay,
    most: int,
    check: Callable[[], object] = lambda: None,
    most_weight: int = WEIGHT_LIMIT,
) -> Rebuilt:
    """Replay the run's records from its trace (blocking: call it in a worker thread;
    ``check`` is called now and then, and may raise to stop it). The spans ended are kept
    within the export queue's bounds (``most`` spans, ``most_weight``: see queue.py)."""
    builder = SpanBuilder()
    ended = SpanQueue(most, most_weight)
    dropped = 0
    last: int | None = None
    for count, record in enumerate(RecordStream(replay.path)):
        if count % CHECK_EVERY == 0:
            check()
        if record.run != replay.run:
            if last is not None:
                break  # a later run: the index reads it
            continue
        if last is None and record.step > FIRST_STEP:
            return Rebuilt(None)  # its start is gone (rotated away): skip the run
        spans = builder.add(record)
        if replay.whole or record.step > replay.step:
            dropped += ended.put(spans)
        last = record.step
        if record.status != RUNNING:
            return Rebuilt(None, tuple(ended.take(len(ended))), dropped, last)
    if last is None:
        return Rebuilt(None)
    return Rebuilt(builder, tuple(ended.take(len(ended))), dropped, last)


class _Follow:
    """One workflow's state: the open run's builder, records to leave out, a rebuild."""

    __slots__ = ("after", "builder", "last", "replay", "run", "waiting")

    def __init__(self) -> None:
        self.builder: SpanBuilder | None = None
        self.run: str | None = None  # the builder's run
        self.after: After | None = None
        self.replay: Replay | None = None
        self.waiting: deque[StoredRecord] | None = None  # records read while the run is rebuilt
        self.last: StoredRecord | None = None  # the builder's latest record (whose writer it names)

    @property
    def idle(self) -> bool:
        return self.builder is None and self.after is None and self.replay is None

    def seen(self, line: StoredRecord) -> bool:
        """True for a record to leave out; the first one after them ends the filter."""
        if self.after is None:
            return False
        run, step = self.after
        if line.run == run and line.step <= step:
            return True
        self.after = None
        return False


class SpanFeed:
    def __init__(self, emit: Callable[[list[Span]], None], request: Callable[[Replay], None]):
        self._emit = emit
        self._request = request
        self._follows: dict[Entry, _Follow] = {}
        self._rebuilding: set[Entry] = set()  # follows whose records wait for a rebuild

    def __len__(self) -> int:
        """Workflows followed (a run open, being rebuilt, or being skipped)."""
        return len(self._follows)

    def feed(self, update: Update) -> None:
        entry = update.entry
        if update.reset:  # read again from its start: what was open there is gone
            self.forget(entry)
        if not update.complete:  # only its latest record: a trace met mid-way, or too big
            if update.lines:
                self._found(entry, update.lines[-1], whole=not update.found)
            return
        follow = self._follows.get(entry)
        if follow is not None and follow.waiting is not None:
            follow.waiting.extend(update.lines)
            if self._waiting() > MAX_WAITING_TOTAL and follow.replay is not None:
                follow.after = (follow.replay.run, WHOLE_RUN)  # skipped: too much waits
                follow.replay = follow.waiting = None
                self._rebuilding.discard(entry)
            return
        self._take(entry, follow or _Follow(), update.lines)

    def sweep(self) -> int:
        """End the open runs whose writer is gone (killed: no terminal record will come)
        once the index has read their trace to its end: their open calls are emitted,
        incomplete, at their last record. How many ended; ``SweepFailed`` (after the
        others) for a run that could not be judged or ended."""
        liveness = Liveness()
        ended = 0
        failed: SweepFailed | None = None
        for entry, follow in list(self._follows.items()):
            try:
                ended += self._sweep(entry, follow, liveness)
            except Exception as exc:  # one run's trouble: the others are swept all the same
                failed = failed or SweepFailed(entry.path, exc)
        if failed is not None:
            raise failed from failed.error
        return ended

    def _sweep(self, entry: Entry, follow: _Follow, liveness: Liveness) -> bool:
        if follow.builder is None or follow.last is None:
            return False
        # records the index has not read yet would be left out once the run is ended
        if liveness.status(follow.last) != LOST or not read_to_end(entry):
            return False
        self._emit(follow.builder.close(LOST))
        follow.after = (follow.run, WHOLE_RUN)  # anything of it read later is old
        follow.builder = follow.last = None
        return True

    def forget(self, entry: Entry) -> None:
        self._follows.pop(entry, None)
        self._rebuilding.discard(entry)

    def _waiting(self) -> int:
        return sum(len(self._follows[entry].waiting or ()) for entry in self._rebuilding)

    def rebuilt(self, replay: Replay, result: Rebuilt | None) -> None:
        """A rebuild ended (None: it failed, and the run is skipped)."""
        follow = self._follows.get(replay.entry)
        if follow is None or follow.replay is not replay:
            return  # forgotten, or read again from its start, meanwhile
        waiting = follow.waiting or ()
        follow.replay = follow.waiting = None
        self._rebuilding.discard(replay.entry)
        if result is None:
            follow.after = (replay.run, WHOLE_RUN)
        else:
            follow.after = (replay.run, result.last_step)
            follow.builder, follow.run = result.builder, replay.run
            # the run's writer, for a sweep before any later record is read
            follow.last = replay.latest if result.builder is not None else None
            if result.spans:
                self._emit(list(result.spans))
        self._take(replay.entry, follow, waiting)

    def _found(self, entry: Entry, latest: StoredRecord, whole: bool) -> None:
        if latest.status != RUNNING and not whole:
            return  # ended: its next run starts from its first record
        follow = self._follows[entry] = _Follow()
        if not whole and Liveness().status(latest) == LOST:
            follow.after = (latest.run, WHOLE_RUN)  # its writer is gone
            return
        follow.replay = Replay(entry, entry.path, latest, whole)
        follow.waiting = deque(maxlen=MAX_WAITING)
        self._rebuilding.add(entry)
        self._request(follow.replay)

    def _take(self, entry: Entry, follow: _Follow, lines: Iterable[StoredRecord]) -> None:
        for line in lines:  # once per record: the common case without calls
            if follow.after is not None and follow.seen(line):
                continue
            record = line.record or parsed(line)
            if record is None:
                continue
            if follow.builder is None or record.run != follow.run:
                if follow.builder is not None:  # the run before never ended (writer killed)
                    self._emit(follow.builder.close(LOST))
                    follow.builder = None
                if record.step > FIRST_STEP:  # met in its middle: skip it
                    follow.after = (record.run, WHOLE_RUN)
                    continue
                follow.builder, follow.run = SpanBuilder(), record.run
            spans = follow.builder.add(record, line.updated)
            if spans:
                self._emit(spans)
            follow.last = line
            if record.status != RUNNING:
                follow.builder = follow.last = None
        if follow.idle:
            self._follows.pop(entry, None)
        else:
            self._follows[entry] = follow
