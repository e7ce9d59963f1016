"""A call's arguments as one bounded line: ``region='apac', pages=4``.

Rendered once per call, on the workflow's thread, so it must be cheap and must never
hurt the workflow: builtin values are rendered piecewise with limits (a huge string,
bytes, list, dict or set is cut, never rendered or sorted whole); other objects through
their ``repr``, which is trusted only until it raises or is slow once, after which their
type shows ``<unrepresentable>``. Addresses (``<Client object at 0x...>``) are never
shown.

The arguments are read from the ``Call`` node the caller yielded when it says them (the
cheap way), else from the new frame, whose locals at its start are just its arguments.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Iterable
from itertools import islice
from types import CodeType, FrameType
from typing import Any

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

    # reprlib sorts a whole dict or set before cutting it: these take the first items.
    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}"
            for key, value in islice(x.items(), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"

    def _items(self, x: Iterable[Any], size: int, level: int, left: str, right: str) -> str:
        if not size:
            return f"{left}{right}" if left == "{" else f"{type(x).__name__}()"
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [self.repr1(item, level - 1) for item in islice(x, self.maxset)]
        if size > self.maxset:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right

    def repr_set(self, x: set[Any], level: int) -> str:
        return self._items(x, len(x), level, "{", "}")

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        return self._items(x, len(x), level, "frozenset({", "})")

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + (self.fillvalue if len(x) > self.maxstring else "")

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return repr(x[: self.maxstring]) + (self.fillvalue if len(x) > self.maxstring else "")

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
    # A builtin type's repr is bounded by the size of the value, not by user code.
    if len(_refused) < _MAX_REFUSED_TYPES and kind.__module__ != "builtins":
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


class _ArgNames:
    """Which locals of a body are its arguments (``co_varnames`` builds a new tuple on
    every access, so this is worked out once per code object)."""

    __slots__ = ("code", "names", "positional", "varargs", "varkw")

    def __init__(self, code: CodeType) -> None:
        count = code.co_argcount + code.co_kwonlyargcount
        names = code.co_varnames
        self.code = code
        self.names = names[:count]
        self.positional = code.co_argcount
        flags = code.co_flags
        self.varargs = names[count] if flags & _CO_VARARGS else None
        count += 1 if flags & _CO_VARARGS else 0
        self.varkw = names[count] if flags & _CO_VARKEYWORDS else None


_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08
_MAX_PLANS = 100_000
_plans: dict[int, _ArgNames] = {}  # by id(code), each keeping its code object


def _plan(code: CodeType) -> _ArgNames:
    plan = _plans.get(id(code))
    if plan is None or plan.code is not code:
        plan = _ArgNames(code)
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[id(code)] = plan
    return plan


def args_of_frame(code: CodeType, frame: FrameType) -> str:
    """The arguments of a body that is starting: its locals are just them."""
    plan = _plan(code)
    local = frame.f_locals
    names = plan.names
    if plan.varargs is None and plan.varkw is None:
        if len(names) == 1:
            name = names[0]
            return f"{name}={render_arg(local[name])}"
        return render_args([(name, local[name]) for name in names])
    pairs: list[tuple[str | None, object]] = [(name, local[name]) for name in names]
    if plan.varargs is not None:
        pairs.extend((None, value) for value in local[plan.varargs])
    if plan.varkw is not None:
        pairs.extend(local[plan.varkw].items())
    return render_args(pairs)


def args_of_call(code: CodeType, node: Any) -> str | None:
    """The same text from the ``Call`` node the caller yielded, or None when the node
    is not this body's (then the frame is read)."""
    function = node.function.function
    if getattr(function, "__code__", None) is not code:
        return None
    plan = _plan(code)
    names = plan.names
    args: tuple[Any, ...] = node.args
    kwargs: dict[str, Any] = node.kwargs
    if not kwargs and plan.varargs is None and plan.varkw is None and len(args) == len(names):
        if len(names) == 1:
            return f"{names[0]}={render_arg(args[0])}"
        return render_args(zip(names, args, strict=True))
    # Defaults belong to the function: two closures may share one code object.
    positional = names[: plan.positional]
    values = tuple(getattr(function, "__defaults__", None) or ())
    defaults: dict[str, Any] = dict(
        zip(positional[len(positional) - len(values) :], values, strict=True)
    )
    defaults.update(getattr(function, "__kwdefaults__", None) or {})
    pairs: list[tuple[str | None, object]] = []
    for index, name in enumerate(names):
        if index < plan.positional and index < len(args):
            pairs.append((name, args[index]))
        elif name in kwargs:
            pairs.append((name, kwargs[name]))
        elif name in defaults:
            pairs.append((name, defaults[name]))
        else:
            return None
    if len(args) > plan.positional:
        if plan.varargs is None:
            return None
        pairs.extend((None, value) for value in args[plan.positional :])
    if plan.varkw is not None:
        pairs.extend((key, value) for key, value in kwargs.items() if key not in names)
    return render_args(pairs)
