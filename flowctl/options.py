"""The command line: the commands' vocabulary (``ALL_COMMANDS``, as data) and one parser
for ``flowctl``, ``doeff-flow`` and each shell line.

Global options (``--trace-dir``, ``--json``, ``--socket``, ``--verbose``) are accepted
before the command and after it (the seed's spelling: ``doeff-flow history wf-001
--last 20 --trace-dir ./x``). Parsing never exits the process: errors raise
``UsageError`` and ``--help`` raises ``HelpShown``, so the shell can use the same parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from doeff_flow_core.records import ALL_STATUSES
from flowctl.errors import UsageError
from flowctl.sources.base import EMPTY, UNREADABLE

EXPORT_FORMATS: Final = ("chrome", "otlp", "svg")
STATUS_CHOICES: Final = (*ALL_STATUSES, EMPTY, UNREADABLE)
DEFAULT_LAST: Final = 10
DEFAULT_POLL_INTERVAL: Final = 0.1


@dataclass(frozen=True)
class Command:
    """A command of the vocabulary, as data (``commands.RUNNERS`` runs it)."""

    name: str
    summary: str
    uses_source: bool = True  # False: never asks flowd (prune acts on files; run writes)
    # False: not offered in the shell (run would hold the prompt for the whole workflow,
    # and import the program's modules into the shell's process).
    in_shell: bool = True


ALL_COMMANDS: Final = {
    command.name: command
    for command in (
        Command("ps", "list workflows: status, step, age of the last update, last slog"),
        Command("history", "the last records of a workflow (--last N, --follow)"),
        Command("watch", "watch a workflow live; with no WF, all of them"),
        Command(
            "prune",
            "remove finished workflows' traces (--older-than 7d, --status, --dry-run)",
            uses_source=False,
        ),
        Command(
            "export", "a workflow's timeline: --format chrome (Perfetto), otlp or svg; -o FILE"
        ),
        Command(
            "run",
            "run a doeff program traced: run pkg.mod:program [--id ID]; prints its value",
            uses_source=False,
            in_shell=False,
        ),
        Command("shell", "the interactive shell"),
    )
}
# The commands the shell offers, completes and lists in its help.
COMMANDS: Final = {name: command for name, command in ALL_COMMANDS.items() if command.in_shell}


class HelpShown(Exception):
    """``--help`` printed the help text; the caller returns success."""


@dataclass(frozen=True)
class GlobalOptions:
    trace_dir: str | None = None
    json: bool = False
    verbose: bool = False
    socket: str | None = None


@dataclass(frozen=True)
class Request:
    """One parsed command line."""

    command: str | None
    options: GlobalOptions
    workflow_id: str | None = None
    status: str | None = None  # ps --status
    last: int = DEFAULT_LAST
    follow: bool = False
    exit_on_complete: bool = False
    poll_interval: float = DEFAULT_POLL_INTERVAL
    status_only: bool = False
    older_than: str | None = None  # prune: a duration as given (7d)
    statuses: str | None = None  # prune --status S,...
    dry_run: bool = False
    format: str | None = None  # export --format; None: from -o's suffix, else chrome
    output: str | None = None  # export -o FILE; None: stdout
    program: str | None = None  # run: pkg.mod:program


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError((message or "bad arguments").strip())
        raise HelpShown()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.01 <= value <= 60:
        raise argparse.ArgumentTypeError("must be between 0.01 and 60 seconds")
    return value


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option not given leaves no attribute, so a value given before the
    # command (or the shell's own options) is not overwritten by a default after it.
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--trace-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="trace directory (default: $DOEFF_FLOW_TRACE_DIR, else .doeff-flow)",
    )
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="flowd socket (used when a daemon is reachable; else files are read)",
    )
    group.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="say which source is used, and show tracebacks of internal errors",
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=(
            "See where running doeff workflows are: ps, history, watch, prune, export, "
            "shell; run a doeff program traced: run."
        ),
        epilog="Run without a command on a terminal to open the interactive shell.",
    )
    _add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ps = commands.add_parser("ps", help="list workflows: status, step, age, last slog")
    ps.add_argument("--status", choices=STATUS_CHOICES, help="only workflows with this status")
    _add_global_options(ps)

    history = commands.add_parser("history", help="the last records of a workflow")
    history.add_argument("workflow_id", metavar="WF")
    history.add_argument(
        "--last", type=_positive_int, default=DEFAULT_LAST, metavar="N", help="records (10)"
    )
    history.add_argument(
        "--follow", "-f", action="store_true", help="then stream new records until it ends"
    )
    _add_global_options(history)

    watch = commands.add_parser("watch", help="watch a workflow live (no WF: all of them)")
    watch.add_argument("workflow_id", metavar="WF", nargs="?")
    watch.add_argument(
        "--exit-on-complete",
        action="store_true",
        help="exit 0 when it completes, 1 when it fails or is lost",
    )
    watch.add_argument(
        "--poll-interval",
        type=_interval,
        default=DEFAULT_POLL_INTERVAL,
        metavar="S",
        help="seconds between checks for new records (0.1)",
    )
    watch.add_argument(
        "--status-only", action="store_true", help="show the status alone, not the call chain"
    )
    _add_global_options(watch)

    prune = commands.add_parser(
        "prune",
        help="remove finished workflows' traces (completed, failed, lost)",
        description=(
            "Remove the trace directories of finished workflows (completed, failed, lost; "
            "never running or unknown, never one whose writer holds its lock, never "
            "through a symbolic link) and report what was freed. Prune always acts on the "
            "files, also when a flowd is running: it prunes --trace-dir, else the default "
            "trace directory ($DOEFF_FLOW_TRACE_DIR, else .doeff-flow)."
        ),
    )
    prune.add_argument(
        "--older-than",
        metavar="AGE",
        help="only workflows last updated longer ago than AGE (90s, 30m, 12h, 7d)",
    )
    prune.add_argument(
        "--status",
        dest="statuses",
        metavar="S,...",
        help="only these statuses, among completed, failed, lost (default: all three)",
    )
    prune.add_argument(
        "--dry-run", "-n", action="store_true", help="say what would be removed; remove nothing"
    )
    _add_global_options(prune)

    export = commands.add_parser(
        "export",
        help="a workflow's timeline as a file: chrome (Perfetto), otlp, svg",
        description=(
            "Write the timeline of a workflow (every run in its trace, rotated parts "
            "included) as Chrome Trace Event JSON for Perfetto or chrome://tracing, "
            "OTLP/JSON for OpenTelemetry, or a standalone SVG picture of its last run."
        ),
    )
    export.add_argument("workflow_id", metavar="WF")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="default: from -o's suffix (.svg: svg, .json: chrome), else chrome",
    )
    export.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write FILE (replaced whole at the end, never left half written); '-' or none: stdout",
    )
    _add_global_options(export)

    run = commands.add_parser(
        "run",
        help="run a doeff program traced (pkg.mod:program), print its value",
        description=(
            "Import PROGRAM (pkg.mod:program or pkg.mod.program; the current directory is "
            "importable) and run it with the handlers doeff run gives a program, traced to "
            "<trace dir>/<ID>/trace.jsonl. Prints the value; a failure is one line on "
            "stderr and exit code 1."
        ),
    )
    run.add_argument("program", metavar="PROGRAM", help="pkg.mod:program or pkg.mod.program")
    run.add_argument(
        "--id",
        dest="workflow_id",
        metavar="ID",
        help="workflow id (default: the program's name and the UTC time, report-20261207T020102Z)",
    )
    _add_global_options(run)

    shell = commands.add_parser("shell", help="interactive shell with the same commands")
    _add_global_options(shell)
    return parser


def parse(
    parser: argparse.ArgumentParser, argv: list[str], base: GlobalOptions | None = None
) -> Request:
    """``argv`` as a Request; global options not given are taken from ``base``."""
    namespace = parser.parse_args(argv)
    values: dict[str, Any] = vars(namespace)
    base = base or GlobalOptions()
    options = GlobalOptions(
        trace_dir=values.get("trace_dir", base.trace_dir),
        json=values.get("json", base.json),
        verbose=values.get("verbose", base.verbose),
        socket=values.get("socket", base.socket),
    )
    return Request(
        command=values.get("command"),
        options=options,
        workflow_id=values.get("workflow_id"),
        status=values.get("status"),
        last=values.get("last", DEFAULT_LAST),
        follow=values.get("follow", False),
        exit_on_complete=values.get("exit_on_complete", False),
        poll_interval=values.get("poll_interval", DEFAULT_POLL_INTERVAL),
        status_only=values.get("status_only", False),
        older_than=values.get("older_than"),
        statuses=values.get("statuses"),
        dry_run=values.get("dry_run", False),
        format=values.get("format"),
        output=values.get("output"),
        program=values.get("program"),
    )
