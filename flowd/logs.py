"""flowd's log lines: each one line, nothing in it that could drive a terminal.

flowd logs paths, ids, collector answers and exception messages, any of which may hold
text someone else wrote (a trace directory's name, a collector's error body). Messages
are escaped where they are made; ``EscapingFormatter`` is the belt and braces that makes
it true of every line whoever built it: the message is escaped whole (a newline in it
cannot forge a second line), and a traceback's lines are escaped one by one.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final

from doeff_flow_core.escape import safe, safe_clip

LINE_FORMAT: Final = "%(asctime)s flowd %(levelname)s %(message)s"
DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
MAX_MESSAGE_CHARS: Final = 2000  # a line, however long what it quotes

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _lines(text: str) -> str:
    return "\n".join(safe(line) for line in text.split("\n"))


class EscapingFormatter(logging.Formatter):
    """flowd's line format, every character that could act on a terminal shown escaped."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT, DATE_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's names
        return safe_clip(super().formatMessage(record), MAX_MESSAGE_CHARS)

    def formatException(self, ei: ExcInfo) -> str:
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines(super().formatStack(stack_info))
