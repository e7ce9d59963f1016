"""Console entry points: ``flowctl`` and ``doeff-flow`` (the seed's name and spelling).

``flowctl [--socket PATH] [--trace-dir DIR] [--json] [--verbose] COMMAND``; with no
command, the shell on a terminal, else the usage and exit code 2. Both return an exit
code from ``flowctl.exitcodes``.
"""

from __future__ import annotations

import sys

from flowctl import exitcodes
from flowctl.commands import dispatch
from flowctl.console import Session, stdio_session
from flowctl.errors import UsageError
from flowctl.options import HelpShown, Request, build_parser, parse


def _prepare_streams() -> None:
    # Text from traces is escaped before printing, but never let an unusual locale
    # turn a character the terminal cannot encode into a traceback.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def run(prog: str, argv: list[str] | None = None, session: Session | None = None) -> int:
    _prepare_streams()
    session = session or stdio_session()
    parser = build_parser(prog)
    try:
        request = parse(parser, list(sys.argv[1:] if argv is None else argv))
    except HelpShown:
        return exitcodes.OK
    except UsageError as exc:
        print(f"{prog}: {exc}", file=session.err)
        return exitcodes.USAGE
    if request.command is None:
        if not session.interactive:
            print(parser.format_usage().rstrip(), file=session.err)
            return exitcodes.USAGE
        request = Request(command="shell", options=request.options)
    try:
        return dispatch(session, request)
    finally:
        try:
            session.out.flush()
        except (BrokenPipeError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    """``flowctl``."""
    return run("flowctl", argv)


def seed_main(argv: list[str] | None = None) -> int:
    """``doeff-flow``: the seed's commands, options after the subcommand."""
    return run("doeff-flow", argv)
