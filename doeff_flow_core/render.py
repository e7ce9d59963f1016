"""Effects as short readable text: ``Get('k')``, ``Spawn(program=child(2), ...)``.

Never ``<... object at 0x...>``: an effect whose repr is the default (or contains
addresses) is rendered from its class name and public fields. Output is bounded.
"""

from __future__ import annotations

import re
from typing import Any

MAX_EFFECT_CHARS = 200
MAX_FIELD_CHARS = 60
ELLIPSIS = "…"

_ADDRESS = re.compile(
    r"<(?:function |bound method |built-in function )?([\w.<>]+?)(?: object)? at 0x[0-9a-fA-F]+>"
)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _strip_addresses(text: str) -> str:
    return _ADDRESS.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)


def render_value(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """A field value: ``@do`` calls as ``name(args)``, addresses stripped, bounded."""
    if type(value).__name__ == "Call" and hasattr(value, "function"):
        return clip(_render_call(value), limit)
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not break tracing
        text = f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
    if " at 0x" in text:
        text = _strip_addresses(text)
    return clip(text, limit)


def _render_call(call: Any) -> str:
    function = getattr(getattr(call, "function", None), "function", None)
    name = getattr(function, "__name__", "program")
    args = [render_value(a, 30) for a in getattr(call, "args", ())]
    kwargs = getattr(call, "kwargs", None) or {}
    args += [f"{k}={render_value(v, 30)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(args)})"


def _public_fields(effect: object) -> list[tuple[str, object]]:
    try:
        items = list(vars(effect).items())
    except TypeError:
        slots = getattr(type(effect), "__slots__", ())
        items = [(name, getattr(effect, name, None)) for name in slots]
    return [(k, v) for k, v in items if not k.startswith("_")]


def render_fields(effect: object) -> str:
    fields = ", ".join(f"{k}={render_value(v)}" for k, v in _public_fields(effect))
    return f"{type(effect).__name__}({fields})"


def render_effect(effect: object) -> str:
    """The effect as one bounded line of text."""
    try:
        text = repr(effect)
    except Exception:
        text = " at 0x"
    if " at 0x" in text:
        try:
            text = render_fields(effect)
        except Exception as exc:
            text = f"{type(effect).__name__}(<unrenderable: {type(exc).__name__}>)"
    return clip(text, MAX_EFFECT_CHARS)
