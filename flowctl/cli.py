"""Console entry points: ``flowctl`` and ``doeff-flow`` (the seed's name and spelling).

``flowctl [--socket PATH] [--trace-dir DIR] [--json] [--verbose] COMMAND``; with no
command, the shell on a terminal, else the usage and exit code 2. Both return an exit
code from ``flowctl.exitcodes``.
"""

from __future__ import annotations

import io
import sys
from dataclasses import replace
from typing import TextIO, cast

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


class Renamed(io.TextIOBase):
    """stderr for ``doeff-flow``: each line that starts ``flowctl: `` starts with the name
    the user typed instead (messages are made in one place for both names)."""

    def __init__(self, stream: TextIO, prog: str) -> None:
        super().__init__()
        self._stream = stream
        self._prefix = f"{prog}: "
        self._line_start = True

    def write(self, text: str) -> int:
        parts = []
        for piece in text.splitlines(keepends=True):
            if self._line_start and piece.startswith(PREFIX):
                piece = self._prefix + piece[len(PREFIX) :]
            parts.append(piece)
            self._line_start = piece.endswith("\n")
        self._stream.write("".join(parts))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


PREFIX = "flowctl: "


def run(prog: str, argv: list[str] | None = None, console: Console | None = None) -> int:
    _prepare_streams()
    console = console or stdio_console()
    if prog != "flowctl":
        console = replace(console, err=cast(TextIO, Renamed(console.err, prog)))
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
