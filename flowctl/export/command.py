"""``flowctl export WF``: a workflow's timeline as Chrome Trace Event JSON, OTLP/JSON or SVG,
or its time as folded stacks or a speedscope file.

The trace is found as ``history`` finds it (the trace directory, or flowd's index when a
daemon answers) and read whole, rotated parts first, as a stream: records become spans
(``doeff_flow_core.timeline.spans``) and spans become text as they end, so memory stays bounded
however long the trace. The SVG needs the run's extent before it draws, so its trace is
read twice, the second time up to the record the first stopped at.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Final, TextIO

from doeff_flow_core import LiveTrace
from doeff_flow_core.liveness import derive_status
from doeff_flow_core.protocol import NO_VALID_RECORDS
from doeff_flow_core.records import LOST as LOST_STATUS
from doeff_flow_core.records import RUNNING
from doeff_flow_core.records import UNKNOWN as UNKNOWN_STATUS
from doeff_flow_core.timeline.otlp import write_export_request
from doeff_flow_core.timeline.spans import WORKFLOW, Span, run_key, spans_of
from doeff_flow_core.tracefiles.reading import RecordStream
from flowctl.errors import TraceUnreadable, WorkflowNotFound
from flowctl.export.chrome import write_chrome
from flowctl.export.ending import LOST, STILL_RUNNING, UNKNOWN, Ending
from flowctl.export.folded import write_folded
from flowctl.export.outfile import STDOUT_NAME, replaced_whole
from flowctl.export.speedscope import write_speedscope
from flowctl.export.svg import write_svg
from flowctl.export.svg_layout import survey

# Runs whose last record is kept for ``Trace.ending``: a run's spans all come out before
# its next run's second record is read, so two would do.
KEPT_RUNS: Final = 4
CHROME: Final = "chrome"
OTLP: Final = "otlp"
SVG: Final = "svg"
FOLDED: Final = "folded"
SPEEDSCOPE: Final = "speedscope"
SUFFIX_FORMATS: Final = {".svg": SVG, ".json": CHROME, ".folded": FOLDED}


def export_format(given: str | None, output: str | None) -> str:
    """``--format``, else what ``-o``'s suffix says (.svg, .json), else chrome."""
    if given is not None:
        return given
    suffix = os.path.splitext(output or "")[1].lower()
    return SUFFIX_FORMATS.get(suffix, CHROME)


class Trace:
    """One workflow's records, read afresh by each ``records()``; what the last reading
    skipped (malformed lines) and whether it ended in a torn line."""

    def __init__(self, workflow_id: str, path: Path) -> None:
        self.workflow_id = workflow_id
        self.path = path
        self.skipped = 0
        self.torn = False
        self.count = 0  # records the last reading gave
        self._last: dict[str, LiveTrace] = {}  # the latest runs' last records, oldest first

    def records(self, limit: int | None = None) -> Generator[LiveTrace]:
        """The records, oldest first; with ``limit``, the first ``limit`` only (a second
        pass that stops where the first did: what that one skipped is what is kept)."""
        stream = RecordStream(self.path)
        self.count = 0
        try:
            last = self._last
            for record in islice(stream, limit):
                self.count += 1
                key = run_key(record)
                if key not in last and len(last) >= KEPT_RUNS:
                    del last[next(iter(last))]
                last[key] = record
                yield record
        except FileNotFoundError:
            raise WorkflowNotFound(self.workflow_id, str(self.path.parent.parent)) from None
        except OSError as exc:
            detail = exc.strerror or type(exc).__name__
            raise TraceUnreadable(self.workflow_id, detail, io_error=True) from None
        finally:
            if limit is None:
                self.skipped, self.torn = stream.skipped, stream.torn

    def check(self) -> None:
        """TraceUnreadable when the trace holds lines but not one valid record (checked
        before any output, which reads only as far as the first record)."""
        reading = self.records()
        with contextlib.closing(reading):
            if next(reading, None) is None and (self.skipped or self.torn):
                raise TraceUnreadable(self.workflow_id, NO_VALID_RECORDS)

    def ending(self, run: str) -> Ending:
        """How ``run`` (a run key), read and left with no terminal record, stands now."""
        last = self._last.get(run)
        if last is None:
            return Ending(STILL_RUNNING, "no terminal record")
        return ending_of(last)


def ending_of(last: LiveTrace) -> Ending:
    """The rule of ``flowctl ps``: a run whose last record is not terminal is lost when its
    writer process is gone, unknown when written on another host, else still running."""
    status = derive_status(RUNNING, last.pid, last.host, last.pid_start)
    if status == LOST_STATUS:
        return Ending(LOST, f"no terminal record, and its writer (pid {last.pid}) is gone")
    if status == UNKNOWN_STATUS:
        return Ending(UNKNOWN, f"no terminal record; written on host {last.host}, not this one")
    if last.pid is None:
        return Ending(STILL_RUNNING, "no terminal record (yet); no writer pid to check")
    return Ending(STILL_RUNNING, f"no terminal record yet; its writer (pid {last.pid}) is alive")


@dataclass(frozen=True)
class Written:
    """What an export wrote, for ``--verbose``."""

    spans: int
    runs: int
    note: str = ""


def _chrome(trace: Trace, out: TextIO) -> Written:
    writer = write_chrome(spans_of(trace.records()), out, trace.ending)
    return Written(writer.spans, writer.runs)


def _otlp(trace: Trace, out: TextIO) -> Written:
    runs = 0

    def counted(spans: Iterable[Span]) -> Iterator[Span]:
        nonlocal runs
        for span in spans:
            runs += span.kind == WORKFLOW  # a run's workflow span is its last
            yield span

    def ending(run: str) -> str:
        return trace.ending(run).word

    return Written(write_export_request(counted(spans_of(trace.records())), out, ending), runs)


def _svg(trace: Trace, out: TextIO) -> Written:
    plan = survey(spans_of(trace.records()))
    ending = trace.ending(plan.run) if plan else None
    stats = write_svg(plan, trace.workflow_id, spans_of(trace.records(trace.count)), out, ending)
    runs = plan.runs if plan else 0
    note = "the last run drawn" if runs > 1 else ""
    if stats.narrow:
        note += f"{'; ' if note else ''}{stats.narrow} short calls drawn over by others"
    return Written(stats.drawn, runs, note)


def _folded(trace: Trace, out: TextIO) -> Written:
    lines, spans, runs = write_folded(spans_of(trace.records()), out)
    note = f"{lines} stacks" + (" of the last run" if runs > 1 else "")
    return Written(spans, runs, note)


def _speedscope(trace: Trace, out: TextIO) -> Written:
    writer = write_speedscope(spans_of(trace.records()), out, trace.workflow_id)
    return Written(writer.spans, writer.runs, f"{writer.profiles} profiles")


WRITERS: Final[dict[str, Callable[[Trace, TextIO], Written]]] = {
    CHROME: _chrome,
    OTLP: _otlp,
    SVG: _svg,
    FOLDED: _folded,
    SPEEDSCOPE: _speedscope,
}


def export(trace: Trace, fmt: str, output: str | None, stdout: TextIO) -> Written:
    """Write ``trace`` as ``fmt`` to ``output`` (replaced whole) or to ``stdout``."""
    trace.check()
    write = WRITERS[fmt]
    if output is None or output == STDOUT_NAME:
        written = write(trace, stdout)
        stdout.flush()
        return written
    with replaced_whole(output) as handle:
        return write(trace, handle)


def report(trace: Trace, fmt: str, output: str | None, written: Written) -> str:
    """One line for ``--verbose``: what was written where, and what was passed over."""
    where = "stdout" if output in (None, STDOUT_NAME) else output
    runs = f"{written.runs} run{'' if written.runs == 1 else 's'}"
    line = f"{trace.workflow_id}: {written.spans} spans of {runs} as {fmt} to {where}"
    if written.note:
        line += f" ({written.note})"
    if trace.skipped:
        line += f"; {trace.skipped} malformed line{'' if trace.skipped == 1 else 's'} skipped"
    if trace.torn:
        line += "; a torn last line left out"
    return line
