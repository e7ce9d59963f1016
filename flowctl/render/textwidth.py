"""Terminal column widths of text, so boxes stay aligned around wide characters."""

from __future__ import annotations

import unicodedata
from functools import lru_cache


@lru_cache(maxsize=4096)
def char_width(char: str) -> int:
    if char.isascii():
        return 1
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def fit(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` columns, an ellipsis marking the cut."""
    if width(text) <= columns:
        return text
    if columns <= 0:
        return ""
    used = 0
    for index, char in enumerate(text):
        used += char_width(char)
        if used > columns - 1:
            return text[:index] + "…"
    return text


def pad(text: str, columns: int) -> str:
    """``text`` fitted to exactly ``columns`` columns."""
    shown = fit(text, columns)
    return shown + " " * (columns - width(shown))
