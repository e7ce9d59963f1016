"""What ``history`` shows of a workflow's records: which run, since when, how long each step
took, and how a run ended when it wrote no terminal record.

Pure: records in, rows out. A step's time is the time to the next record of the same run
and task (a task's records interleave with its siblings'), or, for a task's last record,
to when a later record says the task finished. A run whose last record is
running but whose writer is gone ends with a derived row (``lost``, or ``unknown`` when
it was written on another host), by the rule ``ps`` uses; a running writer gets none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from doeff_flow_core import LiveTrace
from doeff_flow_core.escape import safe
from doeff_flow_core.records import LOST, UNKNOWN
from flowctl import exitcodes
from flowctl.errors import FlowctlError

NO_RUN: Final = "-"  # the run of a record written before records named their run
MAX_RUNS_NAMED: Final = 10  # an error lists at most this many runs


def run_of(record: LiveTrace) -> str:
    return record.run or NO_RUN


def runs_in(records: Iterable[LiveTrace]) -> list[str]:
    """The runs, in the order their first record appears."""
    return list(dict.fromkeys(run_of(record) for record in records))


def _named(runs: Sequence[str]) -> str:
    shown = ", ".join(safe(run) for run in runs[:MAX_RUNS_NAMED])
    more = len(runs) - MAX_RUNS_NAMED
    return shown + (f" and {more} more" if more > 0 else "") if runs else "none"


class UnknownRun(FlowctlError):
    """``--run`` names no run of the workflow."""

    exit_code = exitcodes.NOT_FOUND

    def __init__(self, workflow_id: str, wanted: str, runs: Sequence[str]) -> None:
        super().__init__(f"{workflow_id} has no run {wanted!r}; its runs: {_named(runs)}")


class AmbiguousRun(FlowctlError):
    """``--run`` is a prefix of more than one run."""

    exit_code = exitcodes.USAGE

    def __init__(self, workflow_id: str, wanted: str, runs: Sequence[str]) -> None:
        super().__init__(
            f"{wanted!r} names more than one run of {workflow_id}: {_named(runs)} "
            "(give more of the run id)"
        )


def pick_run(workflow_id: str, records: Sequence[LiveTrace], wanted: str) -> str:
    """The run ``wanted`` names: a run id, or a prefix of exactly one."""
    runs = runs_in(records)
    if wanted in runs:
        return wanted
    matches = [run for run in runs if run.startswith(wanted)]
    if not matches:
        raise UnknownRun(workflow_id, wanted, runs)
    if len(matches) > 1:
        raise AmbiguousRun(workflow_id, wanted, matches)
    return matches[0]


def select(
    records: Sequence[LiveTrace],
    *,
    run: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
) -> list[LiveTrace]:
    """The records of ``run`` updated at ``since`` or later, the last ``last`` of them."""
    chosen = [
        record
        for record in records
        if (run is None or run_of(record) == run) and (since is None or record.updated_at >= since)
    ]
    return chosen[-last:] if last is not None else chosen


def cutoff(now: datetime, age: timedelta | None) -> datetime | None:
    return None if age is None else now - age


@dataclass(frozen=True)
class Step:
    """A record as written, and how long it stood: the seconds to the next record of its
    run and task (None for the last one, or for one followed live)."""

    record: LiveTrace
    took: float | None = None


@dataclass(frozen=True)
class Ending:
    """A derived row: the run's last ``record`` is running, but its writer is gone
    (``lost``) or was on another host (``unknown``)."""

    record: LiveTrace
    status: str


@dataclass(frozen=True)
class RunStart:
    """Where a run begins, when the rows show more than one."""

    record: LiveTrace


Row = Step | Ending | RunStart


def ending(record: LiveTrace, status_of: Callable[[LiveTrace], str]) -> Ending | None:
    """The derived row after a run's last record, or None (it ended, or still runs)."""
    if record.is_terminal:
        return None
    status = status_of(record)
    return Ending(record, status) if status in (LOST, UNKNOWN) else None


def rows(
    records: Sequence[LiveTrace],
    status_of: Callable[[LiveTrace], str],
    *,
    run_headers: bool = True,
) -> list[Row]:
    """The records as rows: each timed, each run started (when there are several) and,
    when it ended without a terminal record, ended by a derived row."""
    took: list[float | None] = [None] * len(records)
    previous: dict[tuple[str, int | None], int] = {}
    last_of_run: dict[str, int] = {}
    for index, record in enumerate(records):
        key = (run_of(record), record.task)
        if key in previous:
            before = records[previous[key]]
            took[previous[key]] = (record.updated_at - before.updated_at).total_seconds()
        previous[key] = index
        # A task's last record stood until the task finished (a later record says when).
        for task, at in record.finished_tasks:
            last = previous.pop((run_of(record), task), None)
            if last is not None and took[last] is None:
                took[last] = (at - records[last].updated_at).total_seconds()
        last_of_run[run_of(record)] = index
    several = run_headers and len(last_of_run) > 1
    ends = {index for index in last_of_run.values()}
    out: list[Row] = []
    for index, record in enumerate(records):
        if several and (index == 0 or run_of(records[index - 1]) != run_of(record)):
            out.append(RunStart(record))
        out.append(Step(record, took[index]))
        if index in ends and (end := ending(record, status_of)) is not None:
            out.append(end)
    return out
