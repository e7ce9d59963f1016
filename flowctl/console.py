"""Where a command writes, and whether it may take over the terminal.

Shared by the entry points, the dispatcher, the shell and the commands, and importing
nothing of flowctl, so that none of them needs another for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Console:
    """Where a command writes, and whether it may take over the terminal."""

    out: TextIO
    err: TextIO
    interactive: bool  # a terminal on both ends: watch goes full screen
    in_shell: bool = False


def stdio_console(*, in_shell: bool = False) -> Console:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return Console(sys.stdout, sys.stderr, interactive, in_shell)
