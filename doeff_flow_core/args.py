"""A call's arguments as one bounded line: ``region='apac', pages=4``.

Rendered once per call, on the workflow's thread, so it must be cheap and must never
hurt the workflow: builtin values are rendered piecewise with limits (a huge string or
list is cut, never rendered whole); other objects through their ``repr``, which is
trusted only until it raises or is slow once, after which their type shows
``<unrepresentable>``. Addresses (``<Client object at 0x...>``) are never shown.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Iterable

from doeff_flow_core.render import ELLIPSIS, _strip_addresses, clip

MAX_ARGS_CHARS = 120
MAX_ARG_CHARS = 48
UNREPRESENTABLE = "<unrepresentable>"
# A repr slower than this once marks its type as unrepresentable from then on.
SLOW_REPR_SECONDS = 0.005
_MAX_REFUSED_TYPES = 1024

_refused: set[type] = set()


class _Repr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxstring = MAX_ARG_CHARS
        self.maxother = MAX_ARG_CHARS
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxdict = 4
        self.maxdeque = self.maxarray = 6
        self.maxlevel = 3
        self.fillvalue = ELLIPSIS

    def repr_instance(self, obj: object, level: int) -> str:
        kind = type(obj)
        if kind in _refused:
            return UNREPRESENTABLE
        start = time.perf_counter()
        try:
            text = repr(obj)
        except Exception:
            _refuse(kind)
            return UNREPRESENTABLE
        if time.perf_counter() - start > SLOW_REPR_SECONDS:
            _refuse(kind)
        if " at 0x" in text:
            text = _strip_addresses(text)
        return clip(text, self.maxother)


def _refuse(kind: type) -> None:
    if len(_refused) < _MAX_REFUSED_TYPES:
        _refused.add(kind)


_repr = _Repr().repr


def render_arg(value: object) -> str:
    """One argument value, bounded; never raises."""
    kind = type(value)
    try:
        if kind is int or kind is bool or kind is float or value is None:
            text = repr(value)
            return text if len(text) <= MAX_ARG_CHARS else clip(text, MAX_ARG_CHARS)
        if kind is str and len(value) <= MAX_ARG_CHARS:  # type: ignore[arg-type]
            return repr(value)
        return _repr(value)
    except Exception:  # reprlib's own helpers call repr on keys and items
        return UNREPRESENTABLE


def render_args(pairs: Iterable[tuple[str | None, object]]) -> str:
    """``name=value, ...`` (a name of None: positional, as for ``*args``), at most
    ``MAX_ARGS_CHARS`` characters."""
    text = ""
    for name, value in pairs:
        part = render_arg(value) if name is None else f"{name}={render_arg(value)}"
        text = f"{text}, {part}" if text else part
        if len(text) > MAX_ARGS_CHARS:
            return clip(text, MAX_ARGS_CHARS)
    return text
