"""The command line: the commands' vocabulary (``ALL_COMMANDS``, as data) and one parser
for ``flowctl``, ``doeff-flow`` and each shell line.

Each command carries its arguments as data (``Argument``); ``build_parser`` declares them
to argparse, and the shell's completer reads the same table: which options a command
has, which take a value, and what completes after each.

Global options (``--trace-dir``, ``--json``, ``--socket``, ``--verbose``) are accepted
before the command and after it (the seed's spelling: ``doeff-flow history wf-001
--last 20 --trace-dir ./x``). Parsing never exits the process: errors raise
``UsageError`` and ``--help`` raises ``HelpShown``, so the shell can use the same parser.
"""

from __future__ import annotations

import argparse
import enum
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from doeff_flow_core.records import ALL_STATUSES, COMPLETED, FAILED, LOST
from flowctl.errors import UsageError
from flowctl.sources.base import EMPTY, UNREADABLE

EXPORT_FORMATS: Final = ("chrome", "otlp", "svg", "folded", "speedscope")
STATUS_CHOICES: Final = (*ALL_STATUSES, EMPTY, UNREADABLE)
PRUNE_STATUSES: Final = (COMPLETED, FAILED, LOST)
DEFAULT_LAST: Final = 10
DEFAULT_POLL_INTERVAL: Final = 0.1
ROOTS_ACTIONS: Final = ("list", "add", "remove")
PROFILE_BY: Final = ("function", "callsite")
PROFILE_TOP: Final = 25


class Complete(enum.Enum):
    """What the shell completes for an argument's value (besides a tuple of words)."""

    WORKFLOW = "a workflow id"
    DIRECTORY = "a directory"
    FILE = "a file"


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


@dataclass(frozen=True)
class Argument:
    """One argument of a command, as data.

    An option has ``flags`` (in the order help shows them); a positional has none and
    names its ``dest``. ``action``: ``"store"`` takes a value, ``"store_true"`` is a
    switch, ``"help"`` prints the help. The parser enforces ``choices``; the shell offers
    them, or else ``completes``, for the value.
    """

    flags: tuple[str, ...] = ()
    dest: str | None = None  # default: argparse's, from the first long flag
    metavar: str | None = None
    help: str | None = None
    action: Literal["store", "store_true", "help", "version"] = "store"
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    completes: Complete | tuple[str, ...] | None = None
    optional: bool = False  # a positional that may be left out (nargs="?")

    def __post_init__(self) -> None:
        if not self.flags and self.dest is None:
            raise ValueError("a positional argument needs a dest")

    @property
    def positional(self) -> bool:
        return not self.flags

    @property
    def takes_value(self) -> bool:
        return self.action == "store"

    @property
    def name(self) -> str:
        """The spelling the shell offers: the long flag (a positional: its metavar)."""
        if not self.flags:
            return self.metavar or str(self.dest)
        return next((flag for flag in self.flags if flag.startswith("--")), self.flags[0])

    @property
    def value_completes(self) -> Complete | tuple[str, ...] | None:
        """What completes the value: the choices, else ``completes``."""
        return self.choices if self.choices is not None else self.completes

    def add_to(self, parser: argparse._ActionsContainer, **override: Any) -> None:
        """Declare this argument to ``parser`` (or a group); ``override``: keywords that
        replace the table's (the global options' ``default``)."""
        names = self.flags or (str(self.dest),)
        keywords: dict[str, Any] = {"action": self.action}
        if self.flags and self.dest is not None:
            keywords["dest"] = self.dest
        if self.optional:
            keywords["nargs"] = "?"
        for key in ("metavar", "help", "type", "default", "choices"):
            value = getattr(self, key)
            if value is not None:
                keywords[key] = value
        if self.action == "version":
            keywords["version"] = f"%(prog)s {package_version()}"
        keywords.update(override)
        parser.add_argument(*names, **keywords)


def package_version() -> str:
    """The installed distribution's version (``--version``)."""
    try:
        return importlib.metadata.version("doeff-flow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


HELP: Final = Argument(("-h", "--help"), action="help", help="show this help message and exit")
VERSION: Final = Argument(("--version",), action="version", help="print the version and exit")
# SUPPRESS: a global option not given leaves no attribute, so a value given before the
# command (or the shell's own options) is not overwritten by a default after it.
GLOBAL_OPTIONS: Final = (
    Argument(
        ("--trace-dir",),
        metavar="DIR",
        help="trace directory (default: $DOEFF_FLOW_TRACE_DIR, else .doeff-flow)",
        completes=Complete.DIRECTORY,
    ),
    Argument(("--json",), action="store_true", help="JSON output"),
    Argument(
        ("--socket",),
        metavar="PATH",
        help="flowd socket (used when a daemon is reachable; else files are read)",
        completes=Complete.FILE,
    ),
    Argument(
        ("--verbose", "-v"),
        action="store_true",
        help="say which source is used, and show tracebacks of internal errors",
    ),
)


def find_option(options: tuple[Argument, ...], word: str) -> Argument | None:
    """The option ``word`` spells, as the parser reads it: a flag, ``--flag=value``, or
    an unambiguous prefix of a long flag."""
    flag = word.split("=", 1)[0] if word.startswith("--") else word
    for option in options:
        if flag in option.flags:
            return option
    if not flag.startswith("--"):
        return None
    matches = [
        option
        for option in options
        if any(spelling.startswith("--") and spelling.startswith(flag) for spelling in option.flags)
    ]
    return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class Command:
    """A command of the vocabulary, as data (``commands.RUNNERS`` runs it)."""

    name: str
    summary: str  # its line in the shell's help
    help: str  # its line in ``flowctl --help``
    arguments: tuple[Argument, ...] = ()  # its own; every command also takes GLOBAL_OPTIONS
    description: str | None = None  # ``flowctl NAME --help``'s text
    uses_source: bool = True  # False: never asks flowd (prune acts on files; run writes)
    # False: not offered in the shell (run would hold the prompt for the whole workflow,
    # and import the program's modules into the shell's process).
    in_shell: bool = True

    @property
    def options(self) -> tuple[Argument, ...]:
        """Every option the command's parser takes: its own, the global ones, --help."""
        own = tuple(argument for argument in self.arguments if not argument.positional)
        return (*own, *GLOBAL_OPTIONS, HELP)

    @property
    def positionals(self) -> tuple[Argument, ...]:
        """Its positional arguments, in order (the shell completes each in turn)."""
        return tuple(argument for argument in self.arguments if argument.positional)


WORKFLOW_ID: Final = Argument(dest="workflow_id", metavar="WF", completes=Complete.WORKFLOW)

ALL_COMMANDS: Final = {
    command.name: command
    for command in (
        Command(
            "ps",
            "list workflows: status, step, age, last slog (--status S,..., --all)",
            help="list workflows: status, step, age, last slog",
            arguments=(
                Argument(
                    ("--status",),
                    metavar="S,...",
                    help=f"only workflows with these statuses ({', '.join(STATUS_CHOICES)})",
                    completes=STATUS_CHOICES,
                ),
                Argument(
                    ("--all", "-a"),
                    dest="all",
                    action="store_true",
                    help=(
                        "every registered trace directory (as flowd lists them), not only "
                        "--trace-dir or .doeff-flow"
                    ),
                ),
            ),
        ),
        Command(
            "history",
            "the last records of a workflow, timed (--last N, --follow, --run, --since)",
            help="the last records of a workflow, each with its time and how long it took",
            description=(
                "The last records of a workflow, oldest first: step, status, the time it was "
                "written and how long the step stood (to the next record of the same task; "
                "blank when not known yet, and while following), then the effect, the result "
                "or the error. A line names each run when several are shown. A run whose "
                "writer died without a terminal record ends with a derived line: lost (the "
                "writer is gone from this host) or unknown (written on another host). --run "
                "and --since look among the latest 10,000 records. With --json: the records "
                'exactly as written, one a line, and the derived line as {"derived": true, '
                '"status": "lost", ...}. With no --trace-dir, WF is looked for in .doeff-flow, '
                "through flowd, then in the registered trace directories (-v says where)."
            ),
            arguments=(
                WORKFLOW_ID,
                Argument(
                    ("--last",),
                    type=_positive_int,
                    default=DEFAULT_LAST,
                    metavar="N",
                    help="records (10)",
                ),
                Argument(
                    ("--follow", "-f"),
                    action="store_true",
                    help="then stream new records until it ends",
                ),
                Argument(
                    ("--run",),
                    metavar="RUN",
                    help="only this run of the workflow (its id, or a unique prefix of it)",
                ),
                Argument(
                    ("--since",),
                    metavar="AGE",
                    help="only records written in the last AGE (90s, 10m, 2h, 1d)",
                ),
            ),
        ),
        Command(
            "watch",
            "watch a workflow live; with no WF, all of them",
            help="watch a workflow live (no WF: all of them)",
            arguments=(
                Argument(
                    dest="workflow_id", metavar="WF", completes=Complete.WORKFLOW, optional=True
                ),
                Argument(
                    ("--exit-on-complete",),
                    action="store_true",
                    help="exit 0 when it completes, 1 when it fails or is lost",
                ),
                Argument(
                    ("--poll-interval",),
                    type=_interval,
                    default=DEFAULT_POLL_INTERVAL,
                    metavar="S",
                    help="seconds between checks for new records (0.1)",
                ),
                Argument(
                    ("--status-only",),
                    action="store_true",
                    help="show the status alone, not the call chain",
                ),
            ),
        ),
        Command(
            "prune",
            "remove finished workflows' traces (--older-than 7d, --status, --dry-run)",
            help="remove finished workflows' traces (completed, failed, lost)",
            description=(
                "Remove the trace directories of finished workflows (completed, failed, lost; "
                "never running or unknown, never one whose writer holds its lock, never "
                "through a symbolic link) and report what was freed. Prune always acts on the "
                "files, also when a flowd is running: it prunes --trace-dir, else the default "
                "trace directory ($DOEFF_FLOW_TRACE_DIR, else .doeff-flow)."
            ),
            arguments=(
                Argument(
                    ("--older-than",),
                    metavar="AGE",
                    help="only workflows last updated longer ago than AGE (90s, 30m, 12h, 7d)",
                ),
                Argument(
                    ("--status",),
                    dest="statuses",
                    metavar="S,...",
                    help="only these statuses, among completed, failed, lost (default: all three)",
                    completes=PRUNE_STATUSES,
                ),
                Argument(
                    ("--dry-run", "-n"),
                    action="store_true",
                    help="say what would be removed; remove nothing",
                ),
            ),
            uses_source=False,
        ),
        Command(
            "export",
            "a workflow's timeline or flame graph: --format chrome, otlp, svg, folded, "
            "speedscope; -o FILE",
            help="a timeline or flame graph as a file: chrome, otlp, svg, folded, speedscope",
            description=(
                "Write the timeline of a workflow (every run in its trace, rotated parts "
                "included) as Chrome Trace Event JSON for Perfetto or chrome://tracing, "
                "OTLP/JSON for OpenTelemetry, or a standalone SVG picture of its last run; or "
                "as flame graphs: folded stacks of its last run (flamegraph.pl, inferno, "
                "speedscope) or a speedscope file (an evented profile per task of each run)."
            ),
            arguments=(
                WORKFLOW_ID,
                Argument(
                    ("--format",),
                    choices=EXPORT_FORMATS,
                    help=(
                        "default: from -o's suffix (.svg: svg, .json: chrome, .folded: folded), "
                        "else chrome"
                    ),
                ),
                Argument(
                    ("--output", "-o"),
                    metavar="FILE",
                    help=(
                        "write FILE (replaced whole at the end, never left half written); "
                        "'-' or none: stdout"
                    ),
                    completes=Complete.FILE,
                ),
            ),
        ),
        Command(
            "profile",
            "where a run's time went, by function: --run RUN, --by callsite, --top N",
            help="where the time of a run went: own and total time, calls, waits by effect",
            description=(
                "Where the time of a run of WF went (the latest run, or --run's: its id or a "
                "unique prefix), one row per function (--by callsite: per call site and the "
                "function called), sorted by own time: its share of the summed time, own "
                "time (less the calls it made in its own task), total time, calls, mean and "
                "longest call, and the effects its calls waited in (Await 1.20s  Ask 10ms). "
                "Spawned tasks count for their own functions: tasks running at once each "
                "count their time, so the summed time can exceed the wall time. --top N: "
                f"the first N rows (default {PROFILE_TOP}; all with --json). "
                "WF is looked for as export looks for it."
            ),
            arguments=(
                WORKFLOW_ID,
                Argument(
                    ("--run",),
                    metavar="RUN",
                    help="this run (its id, or a unique prefix of it); default: the latest",
                ),
                Argument(
                    ("--by",),
                    choices=PROFILE_BY,
                    default="function",
                    help="a row per function (the default) or per call site",
                ),
                Argument(
                    ("--top",),
                    type=_positive_int,
                    metavar="N",
                    help=f"only the first N rows (default {PROFILE_TOP}; --json: all)",
                ),
            ),
        ),
        Command(
            "run",
            "run a doeff program traced: run pkg.mod:program [--id ID]; prints its value",
            help="run a doeff program traced (pkg.mod:program), print its value",
            description=(
                "Import PROGRAM (pkg.mod:program or pkg.mod.program; the current directory is "
                "importable) and run it with the handlers doeff run gives a program, traced to "
                "<trace dir>/<ID>/trace.jsonl. Prints the value; a failure is one line on "
                "stderr and exit code 1."
            ),
            arguments=(
                Argument(
                    dest="program", metavar="PROGRAM", help="pkg.mod:program or pkg.mod.program"
                ),
                Argument(
                    ("--id",),
                    dest="workflow_id",
                    metavar="ID",
                    help=(
                        "workflow id (default: the program's name and the UTC time, "
                        "report-20261207T020102Z)"
                    ),
                ),
            ),
            uses_source=False,
            in_shell=False,
        ),
        Command(
            "roots",
            "trace directories flowd indexes: roots [list | add DIR | remove DIR]",
            help="list, add or remove the trace directories flowd indexes",
            description=(
                "List the trace directories flowd indexes (each one's workflows, whether it "
                "exists, how it is watched), add one, or remove one (its workflows leave the "
                "index; it is dropped from the lists that bring it back when flowd starts). "
                "Without a running flowd, the lists flowd reads when it starts are read and "
                "changed instead ($XDG_STATE_HOME/doeff-flow/trace-dirs and flowd-roots). "
                "/, /proc, /sys, /dev (and under them) and other users' directories are "
                "refused. Listing forgets registered directories that no longer exist."
            ),
            arguments=(
                Argument(
                    dest="action",
                    metavar="ACTION",
                    choices=ROOTS_ACTIONS,
                    optional=True,
                    help="list (the default), add or remove",
                ),
                Argument(
                    dest="directory",
                    metavar="DIR",
                    completes=Complete.DIRECTORY,
                    optional=True,
                    help="the directory to add or remove",
                ),
            ),
        ),
        Command(
            "status",
            "is flowd running: pid, version, uptime, socket, workflows, roots, OTLP export",
            help="whether flowd runs: pid, version, uptime, workflows, roots, OTLP counters",
            description=(
                "Say whether flowd is running and what it is doing: its pid, version, "
                "uptime, socket, workflows and roots, and the OpenTelemetry exporter's "
                "counters. Exit 0 when it runs; 3 when it does not (flowctl then reads the "
                "trace files), as systemctl status does."
            ),
        ),
        Command("shell", "the interactive shell", help="interactive shell with the same commands"),
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
    status: str | None = None  # ps --status S,... as given
    all: bool = False  # ps --all: every registered trace directory
    run: str | None = None  # history --run: a run id or a unique prefix
    since: str | None = None  # history --since: a duration as given (10m)
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
    action: str | None = None  # roots: list, add, remove (None: list)
    directory: str | None = None  # roots add/remove DIR
    by: str = "function"  # profile --by: function or callsite
    top: int | None = None  # profile --top N; None: the default (all with --json)


class _Parser(argparse.ArgumentParser):
    # What an error points to: ``see 'flowctl ps --help'``; in the shell, ``help ps``.
    hint: str | None = None

    def error(self, message: str) -> NoReturn:
        hint = self.hint if self.hint is not None else f"see '{self.prog} --help'"
        raise UsageError(f"{message} ({hint})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError((message or "bad arguments").strip())
        raise HelpShown()


def _add_arguments(parser: argparse.ArgumentParser, arguments: tuple[Argument, ...]) -> None:
    HELP.add_to(parser)
    for argument in arguments:
        argument.add_to(parser)
    group = parser.add_argument_group("global options")
    for option in GLOBAL_OPTIONS:
        option.add_to(group, default=argparse.SUPPRESS)


def build_parser(prog: str, *, shell: bool = False) -> argparse.ArgumentParser:
    """The parser of ``prog``'s command line; with ``shell``, of one shell line (no
    ``shell`` command, no ``--version``, and errors point to the shell's ``help``)."""
    parser = _Parser(
        prog=prog,
        description=(
            "See where running doeff workflows are: ps, history, watch, prune, export, "
            "profile, shell; run a doeff program traced: run; flowd: status, roots."
        ),
        epilog="Run without a command on a terminal to open the interactive shell.",
        add_help=False,
    )
    if shell:
        parser.hint = "try 'help'"
    else:
        VERSION.add_to(parser)
    _add_arguments(parser, ())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in ALL_COMMANDS.values():
        if shell and command.name == "shell":
            continue
        subparser = commands.add_parser(
            command.name, help=command.help, description=command.description, add_help=False
        )
        if shell:
            subparser.hint = f"try 'help {command.name}'"
        _add_arguments(subparser, command.arguments)
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
        all=values.get("all", False),
        run=values.get("run"),
        since=values.get("since"),
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
        action=values.get("action"),
        directory=values.get("directory"),
        by=values.get("by", "function"),
        top=values.get("top"),
    )
