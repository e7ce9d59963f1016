"""Exact stacks from the interpreter's own generator events (Python 3.12+, PEP 669).

doeff 0.8 drives each ``@do`` body as a generator of its own, from Rust: the VM starts
it (``PY_START``), it yields effects and programs (``PY_YIELD``), and it returns
(``PY_RETURN``). A body's callers stay suspended at the yield that started it, so a
call's chain of callers is fixed for its whole life: it is kept once per call
(``Call``), and each effect records only which call yielded it and at which
instruction. Lines and JSON are worked out later, in batches (``StackText``).

A new body's caller is, per thread, the call that last yielded an effect or a program:
the ``@do`` call that yielded the ``Call`` node, the frame whose ``Try``/``Local``/
``Listen`` runs the carried program in place, or the frame whose effect a handler body
answers. Handing control on (``Resume``, ``Pass``, ``Transfer``, ``GetTraceback``) does
not change it, and nothing starts between a body's resumption and its next yield. A
scheduler task switch clears it, so a spawned task starts a chain of its own.

doeff's own programs (``@cache``'s wrapper, ``try_handler``'s helper) are followed for
the effects they perform but not shown; doeff's handler bodies (called with a
continuation) are not followed. Code that is not a generator driven by the VM is
switched off where it starts (``DISABLE``), so plain Python pays nothing after its first
call.

One dispatcher serves the process: the events are global, each thread's traced run has
its own ``Context``, and the events are switched off when the last run ends.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Callable
from time import time as _now
from types import CodeType, FrameType
from typing import Any, Final

from doeff_flow_core.args import render_arg, render_args
from doeff_flow_core.encode import frame_head, json_str, source_line_json
from doeff_flow_core.render import MAX_EFFECT_CHARS, render_effect

# Past this many buffered effects the workflow's own thread encodes them (while its
# caches are warm) and wakes the flusher thread to write them.
MAX_BUFFERED: Final = 1024
MAX_LIVE_CALLS: Final = 100_000  # calls tracked per thread; the oldest are forgotten past it
MAX_KNOWN_CODES: Final = 100_000
_CO_GENERATOR: Final = 0x20
_CO_VARARGS: Final = 0x04
_CO_VARKEYWORDS: Final = 0x08
# Code of these packages is the machinery, not the workflow.
INTERNAL_PATHS: Final = ("/doeff/", "/doeff_vm/", "/doeff_core_effects/", "/doeff_flow_core/")
# sys.monitoring tool ids, in order of preference (0, 1, 2 and 5 are named for
# debuggers, coverage, profilers and optimizers).
_TOOL_PREFERENCE: Final = (4, 3, 2, 1, 0, 5)
TOOL_NAME: Final = "doeff-flow"


class Call:
    """One invocation of a ``@do`` body: who called it, from where, with what."""

    __slots__ = (
        "args",
        "below",
        "call_id",
        "code",
        "exact",
        "offset",
        "outer",
        "parent",
        "parent_offset",
        "tail",
        "task",
    )

    def __init__(
        self,
        call_id: int,  # 0: one of doeff's own programs, followed but not shown
        code: CodeType,
        parent: Call | None,
        task: int | None,
        args: str | None,
        exact: bool = True,
    ) -> None:
        self.call_id = call_id
        # False: met mid-way, its callers unknown (its start was before the run, or it
        # was forgotten when the table was full).
        self.exact = exact
        self.code = code
        self.parent = parent
        # Where the caller was suspended when this call started: fixed for its life.
        self.parent_offset = parent.offset if parent is not None else -1
        self.task = task
        self.args = args
        self.offset: int = -1  # the instruction of this call's latest yield
        # Built when first needed: the callers as JSON frames; this call's identity and
        # arguments closing its JSON frame; the frames of a call it made (where, text).
        self.outer: str | None = None
        self.tail: str | None = None
        self.below: tuple[int, str] | None = None


class Context:
    """One thread's traced run: the live calls, where the next new body belongs, and
    the buffer its effects go to as ``(text, time, task, call, instruction, slog)``."""

    def __init__(
        self,
        buffer: list[object],
        on_full: Callable[[], None],
        slog_type: type | None,
        capture_args: bool,
    ) -> None:
        self.buffer = buffer
        self.on_full = on_full  # called when the buffer holds over MAX_BUFFERED entries
        self.slog_type = slog_type
        self.capture_args = capture_args
        self.calls: dict[int, Call] = {}  # id(frame) -> Call
        self.last: Call | None = None
        self.pending: object = None  # the program ``last`` yielded, until a body starts
        self.task: int | None = None
        self.next_id = 1

    def forget_idle(self) -> None:
        """Bound the table of live calls (bodies that raised or were dropped stay in it
        until their frame's address is reused): keep the calls that yielded since the
        last time, and their callers; failing that, the newest 90%."""
        calls = self.calls
        wanted: set[int] = set()
        for call in calls.values():
            node: Call | None = call if call.offset != -1 else None
            while node is not None and id(node) not in wanted:
                wanted.add(id(node))
                node = node.parent
        keep: dict[int, Call] = {}
        for key, call in calls.items():
            if id(call) in wanted:
                keep[key] = call
                call.offset = -1  # "yielded since" starts again
        if len(keep) > MAX_LIVE_CALLS * 9 // 10:
            keep = dict(list(keep.items())[-(MAX_LIVE_CALLS * 9 // 10) :])
        self.calls = keep

    def enter_task(self, task: int | None) -> None:
        self.task = task
        self.last = None
        self.pending = None


class _ArgNames:
    """Which locals of a body are its arguments (``co_varnames`` builds a new tuple on
    every access, so this is worked out once per code object), and their defaults."""

    __slots__ = ("code", "defaults", "names", "positional", "varargs", "varkw")

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
        self.defaults: dict[str, object] | None = None  # from the function, when first seen

    def defaults_of(self, function: Any) -> dict[str, object]:
        defaults = self.defaults
        if defaults is None:
            positional = self.names[: self.positional]
            values = tuple(getattr(function, "__defaults__", None) or ())
            defaults = dict(zip(positional[len(positional) - len(values) :], values, strict=True))
            defaults.update(getattr(function, "__kwdefaults__", None) or {})
            self.defaults = defaults
        return defaults


_arg_names: dict[int, _ArgNames] = {}


def _plan(code: CodeType) -> _ArgNames:
    plan = _arg_names.get(id(code))
    if plan is None or plan.code is not code:
        plan = _ArgNames(code)
        if len(_arg_names) >= MAX_KNOWN_CODES:
            _arg_names.clear()
        _arg_names[id(code)] = plan
    return plan


def _args_of(code: CodeType, frame: FrameType) -> str:
    """The arguments as they were passed: at the body's start its locals are just them."""
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


def _args_of_call(code: CodeType, node: Any) -> str | None:
    """The same text from the ``Call`` node the caller yielded (cheaper than reading a
    new frame's locals), or None when the node does not say (then the frame is read)."""
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
    defaults = plan.defaults_of(function)
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


class _Dispatcher:
    """The process's one set of ``sys.monitoring`` callbacks, routed per thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contexts: dict[int, Context] = {}
        self.tool: int | None = None
        # @do bodies seen (their local events are on), by id: hashing a code object
        # hashes its bytecode, constants and names every time.
        # The value says whether its frames are shown (False: doeff's own programs).
        self._known: dict[int, tuple[CodeType, bool]] = {}
        self._effect_kinds: dict[type, int] = {}

    # -- activation -------------------------------------------------------------------

    def busy_here(self) -> bool:
        """Whether this thread has a traced run now."""
        return threading.get_ident() in self.contexts

    def claim(self) -> bool:
        """Hold a tool id for the process; False if another tool holds every id."""
        with self._lock:
            return self.tool is not None or self._claim_tool()

    def activate(self, context: Context) -> bool:
        """Route this thread's events to ``context``; False if monitoring is unavailable
        (another tool holds every id) or this thread already has a traced run."""
        monitoring = _monitoring()
        with self._lock:
            ident = threading.get_ident()
            if ident in self.contexts:
                return False
            if self.tool is None and not self._claim_tool():
                return False
            tool = self.tool
            assert tool is not None
            if not self.contexts:
                events = monitoring.events
                monitoring.set_events(tool, events.PY_START)
                for code, _shown in self._known.values():
                    monitoring.set_local_events(tool, code, _LOCAL_EVENTS)
            self.contexts[ident] = context
            return True

    def deactivate(self, context: Context) -> None:
        monitoring = _monitoring()
        with self._lock:
            ident = threading.get_ident()
            if self.contexts.get(ident) is not context:
                for key, value in list(self.contexts.items()):  # ended from another thread
                    if value is context:
                        ident = key
                        break
                else:
                    return
            del self.contexts[ident]
            if not self.contexts and self.tool is not None:
                tool = self.tool
                monitoring.set_events(tool, 0)
                for code, _shown in self._known.values():
                    monitoring.set_local_events(tool, code, 0)

    def _claim_tool(self) -> bool:
        monitoring = _monitoring()
        for tool in _TOOL_PREFERENCE:
            if monitoring.get_tool(tool) is None:
                try:
                    monitoring.use_tool_id(tool, TOOL_NAME)
                except ValueError:  # taken meanwhile
                    continue
                events = monitoring.events
                on_start, on_yield, on_return = self._callbacks()
                monitoring.register_callback(tool, events.PY_START, on_start)
                monitoring.register_callback(tool, events.PY_YIELD, on_yield)
                monitoring.register_callback(tool, events.PY_RETURN, on_return)
                self.tool = tool
                return True
        return False

    # -- events -----------------------------------------------------------------------

    def _first_start(self, code: CodeType, frame: FrameType) -> Any:
        """Classify a code object the first time it starts under a traced run: a ``@do``
        body of the workflow (shown), one of doeff's own programs such as ``@cache``'s
        wrapper (followed for its effects, not shown), or neither (switched off)."""
        if not code.co_flags & _CO_GENERATOR or code.co_name == "<genexpr>":
            return _DISABLE
        context = self.contexts.get(threading.get_ident())
        if context is None:
            return None
        if frame.f_back is None or frame.f_back.f_code is not _VM_ENTRY:
            return None  # a generator iterated by Python code
        internal = any(part in code.co_filename for part in INTERNAL_PATHS)
        if internal and _is_handler_body(code, frame):
            return _DISABLE  # doeff's handlers: their effects are the machinery's own
        if len(self._known) < MAX_KNOWN_CODES:
            self._known[id(code)] = (code, not internal)
            _monitoring().set_local_events(self.tool or 0, code, _LOCAL_EVENTS)
        _begin(context, code, frame, not internal)
        return None

    def _callbacks(self) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """The two event callbacks, as closures over the tables they read: they run for
        every call and every effect, so every lookup saved counts."""
        contexts = self.contexts
        known = self._known
        kinds = self._effect_kinds
        get_ident = threading.get_ident
        getframe = sys._getframe
        first_start = self._first_start
        kind_of = self._kind_of

        def on_start(code: CodeType, offset: int) -> Any:
            hit = known.get(id(code))
            if hit is None or hit[0] is not code:
                return first_start(code, getframe(1))
            # A body already known to be driven by the VM is not checked again: its
            # frame's caller would have to be materialised for that.
            context = contexts.get(get_ident())
            if context is not None:
                _begin(context, code, getframe(1), hit[1])
            return None

        def on_yield(code: CodeType, offset: int, value: object) -> Any:
            context = contexts.get(get_ident())
            if context is None:
                return None
            call = context.calls.get(id(getframe(1)))
            if call is None:
                call = _met_midway(context, code, getframe(1))
                if call is None:
                    return None
            call.offset = offset
            kind = kinds.get(type(value))
            if kind is None:
                kind = kind_of(type(value))
            if kind == _EFFECT:
                context.last = call
                context.pending = None
                try:
                    text = repr(value)
                    if len(text) > MAX_EFFECT_CHARS or " at 0x" in text:
                        text = render_effect(value)
                    buffer = context.buffer
                    buffer.append(
                        (
                            text,
                            _now(),
                            call.task,
                            call,
                            offset,
                            value if type(value) is context.slog_type else None,
                        )
                    )
                    if len(buffer) > MAX_BUFFERED:
                        context.on_full()
                except Exception:  # tracing must never hurt the workflow
                    pass
            elif kind == _PROGRAM:
                context.last = call
                context.pending = value  # a Call node says the arguments of what starts
            return None

        def on_return(code: CodeType, offset: int, value: object) -> Any:
            context = contexts.get(get_ident())
            if context is not None:
                context.calls.pop(id(getframe(1)), None)
            return None

        return on_start, on_yield, on_return

    def _kind_of(self, kind: type) -> int:
        import doeff_vm

        if issubclass(kind, doeff_vm.EffectBase):
            answer = _EFFECT
        elif kind.__name__ in _CONTROLS and kind.__module__.startswith("doeff_vm"):
            answer = _CONTROL
        else:
            answer = _PROGRAM
        if len(self._effect_kinds) < 4096:
            self._effect_kinds[kind] = answer
        return answer


# What a handler yields to hand control on or ask the VM something: nothing starts
# on its behalf.
_CONTROLS: Final = frozenset(
    {
        "Pass",
        "Resume",
        "ResumeThrow",
        "Transfer",
        "TransferThrow",
        "GetTraceback",
        "GetHandlers",
        "GetOuterHandlers",
        "GetBoundaries",
        "GetExecutionContext",
    }
)
_EFFECT: Final = 1
_PROGRAM: Final = 2
_CONTROL: Final = 3


def _begin(context: Context, code: CodeType, frame: FrameType, shown: bool) -> None:
    """A body starts: its caller is the call that yielded last on this thread."""
    try:
        if shown:
            call_id = context.next_id
            context.next_id = call_id + 1
            args = None
            if context.capture_args:
                node = context.pending
                if node is not None and type(node) is _CALL_NODE:
                    args = _args_of_call(code, node)
                if args is None:
                    args = _args_of(code, frame)
        elif context.pending is None:
            # One of doeff's own programs started by a handler for an effect (the memo
            # handler's storage calls, say), not called by the workflow: not followed.
            return
        else:
            call_id, args = 0, None
        # The new call does not become ``last`` until it yields an effect or a program:
        # a handler body that only passes or resumes must not be taken for the caller
        # of what runs next for the same effect.
        context.pending = None
        call = Call(call_id, code, context.last, context.task, args)
        if len(context.calls) >= MAX_LIVE_CALLS:
            context.forget_idle()
        context.calls[id(frame)] = call
    except Exception:  # tracing must never hurt the workflow
        pass


def _met_midway(context: Context, code: CodeType, frame: FrameType) -> Call | None:
    """A known body yields whose start was not seen: it is followed from here on, with
    its callers unknown (records from it say ``trace_exact: false``)."""
    try:
        known = dispatcher()._known.get(id(code))
        if known is None or known[0] is not code or not known[1]:
            return None
        call_id = context.next_id
        context.next_id = call_id + 1
        call = Call(call_id, code, None, context.task, None, exact=False)
        context.calls[id(frame)] = call
        return call
    except Exception:
        return None


def _is_handler_body(code: CodeType, frame: FrameType) -> bool:
    """A handler body is called with the continuation (``k``) among its arguments."""
    from doeff_vm import K

    local = frame.f_locals
    count = code.co_argcount + code.co_kwonlyargcount
    return any(type(local.get(name)) is K for name in code.co_varnames[:count])


_VM_ENTRY: CodeType
_CALL_NODE: type
_DISABLE: object
_LOCAL_EVENTS: int
_dispatcher: _Dispatcher | None = None


def dispatcher() -> _Dispatcher:
    """The process's dispatcher (created on first use: it imports doeff)."""
    global _dispatcher, _VM_ENTRY, _DISABLE, _LOCAL_EVENTS, _CALL_NODE
    if _dispatcher is None:
        import importlib

        import doeff_vm

        _CALL_NODE = doeff_vm.Call

        # The function that hands programs to the VM: every generator the VM starts
        # or resumes has its frame as the caller.
        _VM_ENTRY = importlib.import_module("doeff.run").run.__code__
        _DISABLE = _monitoring().DISABLE
        events = _monitoring().events
        _LOCAL_EVENTS = events.PY_YIELD | events.PY_RETURN
        _dispatcher = _Dispatcher()
    return _dispatcher


class StackText:
    """Turns (call, instruction) into the record's ``trace`` JSON, caching what repeats:
    each instruction's frame text up to its line's source, each call's identity and
    arguments, and each caller's frames (once per call and calling instruction).

    Caches are keyed by ``id(code)`` (hashing a code object hashes its contents) and
    keep the code object, so an id is never taken for a freed object's."""

    def __init__(self) -> None:
        self._lines: dict[int, tuple[CodeType, list[int], list[int]]] = {}
        self.sites: dict[tuple[int, int], tuple[CodeType, str]] = {}

    def line(self, code: CodeType, offset: int) -> int:
        table = self._lines.get(id(code))
        if table is None or table[0] is not code:
            starts: list[int] = []
            numbers: list[int] = []
            for start, _end, number in code.co_lines():
                starts.append(start)
                numbers.append(number if number is not None else code.co_firstlineno)
            table = (code, starts, numbers)
            if len(self._lines) >= MAX_KNOWN_CODES:
                self._lines.clear()
            self._lines[id(code)] = table
        index = bisect.bisect_right(table[1], offset) - 1
        return table[2][index] if index >= 0 else code.co_firstlineno

    def site_entry(self, code: CodeType, offset: int) -> tuple[CodeType, str]:
        """A frame's JSON up to and including its ``code`` member, with its code object."""
        key = (id(code), offset)
        hit = self.sites.get(key)
        if hit is not None and hit[0] is code:
            return hit
        line = self.line(code, offset)
        text = (
            f"{frame_head(code.co_qualname, code.co_filename)}{line},"
            f'"code":{source_line_json(code.co_filename, line)}'
        )
        if len(self.sites) >= MAX_KNOWN_CODES:
            self.sites.clear()
        hit = self.sites[key] = (code, text)
        return hit

    def tail(self, call: Call) -> str:
        """The end of a call's JSON frame: its id and arguments."""
        tail = call.tail
        if tail is None:
            args = "" if call.args is None else f',"args":{json_str(call.args)}'
            tail = call.tail = f',"call":{call.call_id}{args}}}'
        return tail

    def frame(self, call: Call, offset: int) -> str:
        return self.site_entry(call.code, offset)[1] + self.tail(call)

    def outer(self, call: Call) -> str:
        """The call's callers, outermost first, each followed by a comma."""
        if call.outer is not None:
            return call.outer
        pending: list[Call] = []  # callers whose text is not built yet, innermost first
        node: Call | None = call
        while node is not None and node.outer is None:
            pending.append(node)
            node = node.parent
        for item in reversed(pending):
            parent = item.parent
            if parent is None:
                item.outer = ""
            elif not parent.call_id:  # doeff's own program: not shown
                item.outer = parent.outer
            elif parent.below is not None and parent.below[0] == item.parent_offset:
                item.outer = parent.below[1]  # a sibling called from the same place
            else:
                text = f"{parent.outer}{self.frame(parent, item.parent_offset)},"
                parent.below = (item.parent_offset, text)
                item.outer = text
        return call.outer or ""

    def stack(self, call: Call, offset: int) -> str:
        if not call.call_id:  # performed by doeff's own program: its callers' stack
            return f"[{self.outer(call)[:-1]}]"
        return f"[{self.outer(call)}{self.frame(call, offset)}]"


def _monitoring() -> Any:
    """``sys.monitoring`` (Python 3.12+; the type checker targets 3.11)."""
    return getattr(sys, "monitoring", None)


def monitoring_available() -> bool:
    return sys.version_info >= (3, 12)
