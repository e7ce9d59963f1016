"""Where a command writes, and whether it may take over the terminal.

Shared by the entry points, the dispatcher, the shell and the commands, and importing
nothing of flowctl, so that none of them needs another for it. What goes to stderr is
escaped line by line on its way (``EscapedLines``): messages name workflows, paths and
what flowd said, and a message built anywhere must not drive the terminal.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import TextIO, cast

from doeff_flow_core.escape import safe


@dataclass(frozen=True)
class Console:
    """Where a command writes, and whether it may take over the terminal."""

    out: TextIO
    err: TextIO
    interactive: bool  # a terminal on both ends: watch goes full screen
    in_shell: bool = False


class EscapedLines(io.TextIOBase):
    """A text stream that writes to ``stream`` what it is given, each line escaped (the
    newlines kept): belt and braces for messages, which are escaped where they are made."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write("\n".join(safe(part) for part in text.split("\n")))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


def escaped(stream: TextIO) -> TextIO:
    return cast(TextIO, EscapedLines(stream))


def stdio_console(*, in_shell: bool = False) -> Console:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return Console(sys.stdout, escaped(sys.stderr), interactive, in_shell)
