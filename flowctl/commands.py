"""The commands, and the one dispatcher that one-shot mode and the shell share
(as supervisorctl does): each command of the vocabulary (``options.ALL_COMMANDS``, as
data) runs as a function of a console, a request and a source (``RUNNERS``).

The shell is handed ``dispatch`` when it starts, so it never imports this module.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from doeff_flow_core.escape import safe, safe_clip
from doeff_flow_core.protocol import HISTORY_MAX, NO_VALID_RECORDS
from doeff_flow_core.records import RUNNING, UNKNOWN
from doeff_flow_core.tracefiles.layout import resolve_trace_dir
from flowctl import exitcodes
from flowctl.console import Console
from flowctl.errors import FlowctlError, TraceUnreadable, UsageError, WorkflowNotFound
from flowctl.history import Ending, Row, Step, cutoff, ending, pick_run, rows, select
from flowctl.lookup import find_source
from flowctl.options import ALL_COMMANDS, STATUS_CHOICES, Request
from flowctl.render.history import (
    history_ending_json,
    history_ending_line,
    history_json_line,
    history_line,
    history_run_line,
)
from flowctl.render.text import ps_json, ps_lines
from flowctl.sources.base import UNREADABLE, Source, WorkflowEntry
from flowctl.sources.connect import open_source, resilient
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.failover import notes_of
from flowctl.sources.files import FileSource
from flowctl.watch.model import DashboardWatch, WatchModel, WorkflowWatch

FOLLOW_POLL: Final = 0.1


MAX_MESSAGE_CHARS: Final = 1000


def warn(console: Console, message: str) -> None:
    """One line on stderr; a message may name anything a trace or flowd said, so it is
    escaped (and bounded) here, whoever built it."""
    print(f"flowctl: {safe_clip(message, MAX_MESSAGE_CHARS)}", file=console.err)


def malformed(skipped: int) -> str:
    return f"{skipped} malformed line{'' if skipped == 1 else 's'} skipped"


def run_ps(console: Console, request: Request, source: Source) -> int:
    # A long listing makes many objects that live until it is printed, none of them in
    # a cycle: the collector, which would look at them all again and again, waits
    # until they are gone.
    collecting = gc.isenabled()
    gc.disable()
    try:
        unreadable = _print_ps(console, request, source)
    finally:
        if collecting:
            gc.enable()
    for entry in unreadable:
        warn(console, f"{entry.name}: {entry.problem}")
    return exitcodes.BAD_TRACE if unreadable else exitcodes.OK


def ps_statuses(text: str) -> frozenset[str]:
    """``failed,lost``: statuses ``ps`` can show (UsageError otherwise)."""
    statuses = frozenset(part.strip() for part in text.split(",") if part.strip())
    wrong = sorted(statuses - set(STATUS_CHOICES))
    if wrong or not statuses:
        raise UsageError(
            f"no status {', '.join(wrong) or text!r}: choose from {', '.join(STATUS_CHOICES)}"
        )
    return statuses


def _print_ps(console: Console, request: Request, source: Source) -> list[WorkflowEntry]:
    """``ps`` printed; the entries that could not be read."""
    statuses = None if request.status is None else ps_statuses(request.status)
    if request.all and request.options.trace_dir is not None:
        raise UsageError("ps --all lists every trace directory; leave out --trace-dir")
    if request.all and not (isinstance(source, DaemonSource) and source.root is None):
        from flowctl.lookup import list_every_root

        entries = list_every_root()  # as flowd would list them, from the files
    else:
        entries = source.list_workflows()
    if statuses is not None:
        entries = [entry for entry in entries if entry.status in statuses]
    now = datetime.now(UTC)
    if request.options.json:
        console.out.write(ps_json(entries, now) + "\n")
    else:
        console.out.write("".join(line + "\n" for line in ps_lines(entries, now)))
    console.out.flush()
    return [entry for entry in entries if entry.status == UNREADABLE]


def _workflow_id(request: Request) -> str:
    if request.workflow_id is None:
        raise UsageError("a workflow id is needed")
    return request.workflow_id


def run_history(console: Console, request: Request, source: Source) -> int:
    from flowctl.prune import parse_duration

    workflow_id = _workflow_id(request)
    since = cutoff(
        datetime.now(UTC), None if request.since is None else parse_duration(request.since)
    )
    if request.follow:
        return _follow_history(console, request, source, workflow_id, since)
    # A run or a time is looked for among the latest HISTORY_MAX records.
    window = request.last if request.run is None and since is None else HISTORY_MAX
    history = source.history(workflow_id, max(window, request.last))
    run = None if request.run is None else pick_run(workflow_id, history.records, request.run)
    records = select(history.records, run=run, since=since, last=request.last)
    _print_rows(console, request, rows(records, source.status))
    if history.skipped:
        warn(console, f"{workflow_id}: {malformed(history.skipped)}")
        return exitcodes.BAD_TRACE
    return exitcodes.OK


def _print_rows(console: Console, request: Request, shown: list[Row]) -> None:
    as_json = request.options.json
    lines = []
    for row in shown:
        if isinstance(row, Step):
            record = row.record
            lines.append(history_json_line(record) if as_json else history_line(record, row.took))
        elif isinstance(row, Ending):
            end = history_ending_json if as_json else history_ending_line
            lines.append(end(row.record, row.status))
        elif not as_json:
            lines.append(history_run_line(row.record))
    console.out.write("".join(line + "\n" for line in lines))
    console.out.flush()


def _follow_history(
    console: Console, request: Request, source: Source, workflow_id: str, since: datetime | None
) -> int:
    """The last records, then each new one until the workflow ends (completed, failed, lost);
    a step's time is not known when it is shown, so followed lines carry none."""
    source = resilient(source, request.options)  # goes on from the files while flowd is away
    notes = notes_of(source)
    feed = source.follow(workflow_id, snapshot=request.last, every_record=True)
    try:
        update = feed.poll(0)
        if not update.present:
            source.list_workflows()  # a missing trace directory is its own error
            raise WorkflowNotFound(workflow_id, source.location)
        if not update.records and update.skipped:
            raise TraceUnreadable(workflow_id, NO_VALID_RECORDS)
        run = None if request.run is None else pick_run(workflow_id, update.records, request.run)
        latest = None
        while True:
            records = select(update.records, run=run, since=since)
            for note in notes.take() if notes is not None else ():
                warn(console, note)
            if records:
                _print_rows(console, request, [Step(record) for record in records])
                latest = records[-1]
            if latest is not None and (
                latest.is_terminal or source.status(latest) not in (RUNNING, UNKNOWN)
            ):
                end = ending(latest, source.status)
                if end is not None:
                    _print_rows(console, request, [end])
                return exitcodes.OK
            update = feed.poll(FOLLOW_POLL)
    finally:
        feed.close()


def run_watch(console: Console, request: Request, source: Source) -> int:
    model: WatchModel
    as_json, status_only = request.options.json, request.status_only
    source = resilient(source, request.options)  # goes on from the files while flowd is away
    notes = notes_of(source)
    if request.workflow_id is None:
        model = DashboardWatch(source, status_only=status_only, as_json=as_json)
    else:
        model = WorkflowWatch(source, request.workflow_id, status_only=status_only, as_json=as_json)
    if console.interactive and not request.options.json:
        from flowctl.watch.screen import run_screen

        return run_screen(
            model, request.poll_interval, request.exit_on_complete, console.out, notes
        )
    from flowctl.watch.plain import run_plain

    return run_plain(
        model, request.poll_interval, request.exit_on_complete, console.out, notes, console.err
    )


def run_prune(console: Console, request: Request, source: Source) -> int:
    from flowctl.prune import (
        PRUNABLE,
        parse_duration,
        parse_statuses,
        prune,
        report_json,
        report_lines,
    )

    older_than = None if request.older_than is None else parse_duration(request.older_than)
    statuses = frozenset(PRUNABLE) if request.statuses is None else parse_statuses(request.statuses)
    now = datetime.now(UTC)
    report = prune(
        request.options.trace_dir,
        older_than=older_than,
        statuses=statuses,
        dry_run=request.dry_run,
        now=now,
    )
    if request.options.json:
        console.out.write(report_json(report) + "\n")
    else:
        console.out.write("".join(line + "\n" for line in report_lines(report, now)))
        if request.options.verbose:
            for item in report.skipped:
                warn(console, f"skipped {item.workflow_id}: {item.reason}")
    console.out.flush()
    return exitcodes.OK


def run_export(console: Console, request: Request, source: Source) -> int:
    from flowctl.export.command import Trace, export, export_format, report

    workflow_id = _workflow_id(request)
    fmt = export_format(request.format, request.output)
    trace = Trace(workflow_id, source.trace_path(workflow_id))
    written = export(trace, fmt, request.output, console.out)
    if request.options.verbose:
        warn(console, report(trace, fmt, request.output, written))
    return exitcodes.OK


def run_profile(console: Console, request: Request, source: Source) -> int:
    from flowctl.profile import print_profile

    workflow_id = _workflow_id(request)
    skipped = print_profile(console, request, source, workflow_id)
    if skipped:
        warn(console, f"{workflow_id}: {malformed(skipped)}")
        return exitcodes.BAD_TRACE
    return exitcodes.OK


def run_run(console: Console, request: Request, source: Source) -> int:
    from flowctl.runprogram import run_program

    return run_program(console, request)


def run_shell(console: Console, request: Request, source: Source) -> int:
    if console.in_shell:
        warn(console, "already in the shell")
        return exitcodes.USAGE
    from flowctl.shell import run_shell_session

    return run_shell_session(request.options, source, dispatch)


def run_roots(console: Console, request: Request, source: Source) -> int:
    from flowctl.roots import run_roots

    return run_roots(console, request, source)


def run_status(console: Console, request: Request, source: Source) -> int:
    from flowctl.status import run_status

    return run_status(console, request, source)


RUNNERS: Final[dict[str, Callable[[Console, Request, Source], int]]] = {
    "ps": run_ps,
    "history": run_history,
    "watch": run_watch,
    "prune": run_prune,
    "export": run_export,
    "profile": run_profile,
    "run": run_run,
    "roots": run_roots,
    "status": run_status,
    "shell": run_shell,
}


def dispatch(console: Console, request: Request, source: Source | None = None) -> int:
    """Run ``request``; failures become one line on ``console.err`` and an exit code."""
    command = ALL_COMMANDS.get(request.command or "")
    if command is None:
        warn(console, f"unknown command {request.command!r}")
        return exitcodes.USAGE
    if console.in_shell and not command.in_shell:
        warn(console, f"{command.name} is not available in the shell; run it from the command line")
        return exitcodes.USAGE
    try:
        if not command.uses_source:  # the files themselves, whatever source is open
            source = FileSource(resolve_trace_dir(request.options.trace_dir))
        if source is None:
            source = open_source(request.options, console.err)
        if command.uses_source:
            source = find_source(request, source, console.err)
        return RUNNERS[command.name](console, request, source)
    except FlowctlError as exc:
        warn(console, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        return exitcodes.OK
    except Exception as exc:  # a bug: still one line, and the traceback when asked
        if request.options.verbose:
            for line in traceback.format_exc().splitlines():
                print(safe(line), file=console.err)
        warn(console, f"internal error: {type(exc).__name__}: {exc}")
        return exitcodes.INTERNAL
