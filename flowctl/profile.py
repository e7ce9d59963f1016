"""``flowctl profile WF``: where the time of a run went, by function or by call site.

The trace is found as ``export`` finds it and read once as a stream (rotated parts first):
records become spans, spans a profile per run (``doeff_flow_core.timeline.profile``),
so memory stays bounded however long the trace. ``--run`` picks a run as ``history --run``
does (its id or a unique prefix); by default the latest run is shown.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from doeff_flow_core import LiveTrace
from doeff_flow_core.protocol import NO_VALID_RECORDS
from doeff_flow_core.timeline.profile import FUNCTION, By, Profile, profiles_of
from doeff_flow_core.timeline.spans import spans_of
from flowctl import exitcodes
from flowctl.console import Console
from flowctl.errors import FlowctlError, TraceUnreadable
from flowctl.export.command import Trace
from flowctl.export.folded import collector_paused
from flowctl.history import NO_RUN, pick_run, run_of
from flowctl.options import PROFILE_TOP, Request
from flowctl.render.profile import profile_json, profile_lines
from flowctl.sources.base import Source

FALLBACK_COLUMNS: Final = 120  # not a terminal and no $COLUMNS


class NoRunYet(FlowctlError):
    """A trace with no record at all: nothing ran yet."""

    exit_code = exitcodes.NOT_FOUND

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"{workflow_id} has no run to profile yet (its trace is empty)")


@dataclass(frozen=True)
class Profiled:
    """The chosen run's profile, and what the reading passed over."""

    profile: Profile
    skipped: int
    torn: bool


def _matching(
    records: Iterable[LiveTrace], wanted: str | None, firsts: dict[str, LiveTrace]
) -> Iterator[LiveTrace]:
    """The records of the runs ``wanted`` may name (every run when None); the first record
    of every run is kept in ``firsts`` (a record per run: bounded by the runs)."""
    if wanted is None:
        latest = None
        for record in records:
            if record.run is not latest:  # one run's records share one string, mostly
                latest = record.run
                firsts.setdefault(run_of(record), record)
            yield record
        return
    for record in records:
        run = run_of(record)
        if run not in firsts:
            firsts[run] = record
        if run.startswith(wanted):
            yield record


def profile_trace(trace: Trace, by: By = FUNCTION, wanted: str | None = None) -> Profiled:
    """The profile of the run ``wanted`` names (the latest when None); UnknownRun,
    AmbiguousRun as ``history --run``; NoRunYet for an empty trace."""
    firsts: dict[str, LiveTrace] = {}
    profiles: dict[str, Profile] = {}  # history's run id -> its profile (the candidates')
    with collector_paused():
        for profile in profiles_of(spans_of(_matching(trace.records(), wanted, firsts)), by):
            # A trace written before records named their run gives its runs no id.
            profiles[profile.run if profile.run in firsts else NO_RUN] = profile
            if wanted is None:
                profiles = {profile.run: profile}  # only the latest is kept
    if wanted is None:
        latest = next(reversed(profiles.values()), None) if profiles else None
    else:
        latest = profiles.get(pick_run(trace.workflow_id, list(firsts.values()), wanted))
    if latest is None:
        if trace.skipped or trace.torn:
            raise TraceUnreadable(trace.workflow_id, NO_VALID_RECORDS)
        raise NoRunYet(trace.workflow_id)
    return Profiled(latest, trace.skipped, trace.torn)


def terminal_columns() -> int:
    """The terminal's width ($COLUMNS first), else FALLBACK_COLUMNS."""
    return shutil.get_terminal_size((FALLBACK_COLUMNS, 24)).columns


def print_profile(console: Console, request: Request, source: Source, workflow_id: str) -> int:
    """Print the profile ``request`` asks for; the malformed lines the reading skipped."""
    by: By = "callsite" if request.by == "callsite" else "function"
    trace = Trace(workflow_id, source.trace_path(workflow_id))
    profiled = profile_trace(trace, by, request.run)
    if request.options.json:
        console.out.write(profile_json(profiled.profile, request.top) + "\n")
    else:
        top = PROFILE_TOP if request.top is None else request.top
        lines = profile_lines(profiled.profile, terminal_columns(), top)
        console.out.write("".join(line + "\n" for line in lines))
    console.out.flush()
    return profiled.skipped
