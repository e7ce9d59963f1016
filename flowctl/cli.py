"""Console entry points: ``flowctl`` and ``doeff-flow`` (the seed's name and spelling).

``flowctl [--socket PATH] [--trace-dir DIR] [--json] [--verbose] COMMAND``; with no
command, the shell on a terminal, else the usage and exit code 2. Both return an exit
code from ``flowctl.exitcodes``.
"""

from __future__ import annotations

import sys

from flowctl import exitcodes
from flowctl.commands import dispatch
from flowctl.console import Console, stdio_console
from flowctl.errors import UsageError
from flowctl.options import HelpShown, Request, build_parser, parse


def _prepare_streams() -> None:
    # Text from traces is escaped before printing, but never let an unusual locale
    # turn a character the terminal cannot encode into a traceback.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def run(prog: str, argv: list[str] | None = None, console: Console | None = None) -> int:
    _prepare_streams()
    console = console or stdio_console()
    parser = build_parser(prog)
    try:
        request = parse(parser, list(sys.argv[1:] if argv is None else argv))
    except HelpShown:
        return exitcodes.OK
    except UsageError as exc:
        print(f"{prog}: {exc}", file=console.err)
        return exitcodes.USAGE
    if request.command is None:
        if not console.interactive:
            print(parser.format_usage().rstrip(), file=console.err)
            return exitcodes.USAGE
        request = Request(command="shell", options=request.options)
    try:
        return dispatch(console, request)
    finally:
        try:
            console.out.flush()
        except (BrokenPipeError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    """``flowctl``."""
    return run("flowctl", argv)


def seed_main(argv: list[str] | None = None) -> int:
    """``doeff-flow``: the seed's commands, options after the subcommand."""
    return run("doeff-flow", argv)
