"""Untrusted text made safe to print: nothing a workflow writes can drive the terminal.

The one escaping function of the project: flowctl passes every text from a trace or from
flowd through it before it reaches a terminal, and flowd every text it logs (paths, ids,
a collector's answers), so it lives here, in the standard-library core both may import.

Effect reprs, slog messages, errors, results and even function and file names come from
the traced program. Control characters (C0, DEL, C1: ESC, CSI, OSC, ``\\r``, ...), bidi
overrides and isolates, line separators and lone surrogates are shown escaped
(``\\x1b``, ``\\u202e``), never passed to the terminal. ``--json`` output is not escaped
here: JSON escapes what it must and stays exact.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ufeff\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """``text`` with every character that could act on a terminal shown escaped."""
    return _UNSAFE.sub(_escape_char, text)


def safe_clip(text: str, limit: int) -> str:
    """``safe(text)`` at most ``limit`` characters long (an ellipsis marks a cut)."""
    shown = safe(text)
    if len(shown) <= limit:
        return shown
    return shown[: max(limit - 1, 0)] + "…" if limit > 0 else ""
