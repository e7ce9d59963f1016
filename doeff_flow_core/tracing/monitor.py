"""Exact stacks from the interpreter's own generator events (Python 3.12+, PEP 669).

doeff 0.8 drives each ``@do`` body as a generator of its own, from Rust: the VM starts
it (``PY_START``), it yields effects and programs (``PY_YIELD``), and it returns
(``PY_RETURN``). A body's callers stay suspended at the yield that started it, so a
call's chain of callers is fixed for its whole life: it is kept once per call
(``Call``), and each effect records only which call yielded it and at which
instruction. Lines and JSON are worked out later, in batches (``stacktext``).

A new body's caller is the call that last yielded an effect or a program in its task:
the ``@do`` call that yielded the ``Call`` node, the frame whose ``Try``/``Local``/
``Listen`` runs the carried program in place, or the frame whose effect a handler body
answers. Handing control on (``Resume``, ``Pass``, ``Transfer``, ``GetTraceback``) does
not change it, and nothing starts between a body's resumption and its next yield. A
switch to another task clears it, so a spawned task starts a chain of its own.

A traced program owns the task it starts in and the tasks spawned from those; the
caller tells the dispatcher which context owns the task running now (``set_current``),
and only bodies that its run's VM starts in those tasks are followed. doeff's own
programs (``@cache``'s wrapper, ``try_handler``'s helper) are followed for the effects
they perform when the workflow calls them, but not shown; doeff's handler bodies (called
with a continuation) are not followed. Code that is not a generator is switched off
where it starts (``DISABLE``), so plain Python pays nothing after its first call.

One dispatcher serves the process; its events are switched off when the last traced
run ends.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from time import time as _now
from types import CodeType, FrameType
from typing import Any, Final

from doeff_flow_core.encode import CallFailed
from doeff_flow_core.render import MAX_EFFECT_CHARS, render_effect
from doeff_flow_core.tracing.args import args_of_call, args_of_frame
from doeff_flow_core.tracing.shadow import MAX_LIVE_CALLS, Call, Context

# Past this many buffered effects the workflow's own thread encodes them (while its
# caches are warm) and wakes the flusher thread to write them.
MAX_BUFFERED: Final = 1024
MAX_KNOWN_CODES: Final = 100_000  # code objects remembered as @do bodies
_CO_GENERATOR: Final = 0x20
# sys.monitoring tool ids, in order of preference (0, 1, 2 and 5 are named for
# debuggers, coverage, profilers and optimizers).
_TOOL_PREFERENCE: Final = (4, 3, 2, 1, 0, 5)
TOOL_NAME: Final = "doeff-flow"
# What a handler yields to hand control on or ask the VM something: nothing starts on
# its behalf.
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
_CARRIER: Final = 4  # an effect whose handler runs the program it carries


class _Dispatcher:
    """The process's one set of ``sys.monitoring`` callbacks, routed per thread to the
    context that owns the task running there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contexts: dict[int, Context] = {}  # thread -> the context running there
        self._active: set[Context] = set()
        self.tool: int | None = None
        # @do bodies seen (their local events are on), by id: hashing a code object
        # hashes its bytecode, constants and names every time. The value says whether
        # its frames are shown (False: doeff's own programs).
        self.known: dict[int, tuple[CodeType, bool]] = {}
        self._kinds: dict[type, int] = {}

    # -- activation -------------------------------------------------------------------

    def claim(self) -> bool:
        """Hold a tool id for the process; False if another tool holds every id."""
        with self._lock:
            return self._tool_is_ours() or self._claim_tool()

    def activate(self, context: Context) -> bool:
        """Switch the events on for ``context``'s run; False if no tool id is ours."""
        monitoring = _monitoring()
        with self._lock:
            if not (self._tool_is_ours() or self._claim_tool()):
                return False
            tool = self.tool
            try:
                if not self._active:
                    # PY_UNWIND can only be switched on for all code; it costs only
                    # frames that end by raising.
                    monitoring.set_events(
                        tool, monitoring.events.PY_START | monitoring.events.PY_UNWIND
                    )
                    for code, _shown in self.known.values():
                        monitoring.set_local_events(tool, code, _LOCAL_EVENTS)
            except ValueError:  # the id was taken from us meanwhile
                return False
            self._active.add(context)
            return True

    def deactivate(self, context: Context) -> None:
        """The run ended: stop routing to it; the last one switches the events off."""
        with self._lock:
            for ident, current in list(self.contexts.items()):
                if current is context:
                    del self.contexts[ident]
            if context not in self._active:
                return
            self._active.discard(context)
            context.entry = None
            if not self._active and self._tool_is_ours():
                monitoring = _monitoring()
                tool = self.tool
                try:
                    monitoring.set_events(tool, 0)
                    for code, _shown in self.known.values():
                        monitoring.set_local_events(tool, code, 0)
                except ValueError:
                    pass

    def set_current(self, context: Context | None) -> None:
        """The task running now on this thread belongs to ``context`` (None: to none)."""
        ident = threading.get_ident()
        if context is None or context not in self._active:
            self.contexts.pop(ident, None)
        else:
            self.contexts[ident] = context

    def _tool_is_ours(self) -> bool:
        return self.tool is not None and _monitoring().get_tool(self.tool) == TOOL_NAME

    def _claim_tool(self) -> bool:
        monitoring = _monitoring()
        for tool in _TOOL_PREFERENCE:
            if monitoring.get_tool(tool) is None:
                try:
                    monitoring.use_tool_id(tool, TOOL_NAME)
                except ValueError:  # taken meanwhile
                    continue
                events = monitoring.events
                on_start, on_yield, on_return, on_unwind = self._callbacks()
                monitoring.register_callback(tool, events.PY_START, on_start)
                monitoring.register_callback(tool, events.PY_YIELD, on_yield)
                monitoring.register_callback(tool, events.PY_RETURN, on_return)
                monitoring.register_callback(tool, events.PY_UNWIND, on_unwind)
                self.tool = tool
                return True
        return False

    # -- events -----------------------------------------------------------------------

    def _first_start(self, code: CodeType, frame: FrameType) -> Any:
        """Classify a code object the first time it starts in a traced run: a ``@do``
        body of the workflow (shown), one of doeff's own programs such as ``@cache``'s
        wrapper (followed for its effects, not shown), or neither (switched off)."""
        if not code.co_flags & _CO_GENERATOR or code.co_name == "<genexpr>":
            return _DISABLE
        context = self.contexts.get(threading.get_ident())
        if context is None or frame.f_back is not context.entry:
            return None  # not started by this run's VM (iterated by Python code, say)
        internal = code.co_filename.startswith(internal_dirs())
        if internal and _is_handler_body(code, frame):
            return _DISABLE  # doeff's handlers: their effects are the machinery's own
        try:
            _monitoring().set_local_events(self.tool, code, _LOCAL_EVENTS)
        except ValueError:
            return None
        if len(self.known) < MAX_KNOWN_CODES:
            self.known[id(code)] = (code, not internal)
        _begin(context, code, frame, not internal)
        return None

    def _kind_of(self, kind: type) -> int:
        import doeff_vm

        if issubclass(kind, doeff_vm.EffectBase):
            answer = _CARRIER if getattr(kind, "__doeff_runs_carried__", None) else _EFFECT
        elif kind.__name__ in _CONTROLS and kind.__module__.startswith("doeff_vm"):
            answer = _CONTROL
        else:
            answer = _PROGRAM
        if len(self._kinds) < 4096:
            self._kinds[kind] = answer
        return answer

    def _callbacks(self) -> tuple[Callable[..., Any], ...]:
        """The event callbacks, as closures over the tables they read: they run for every
        call and every effect, so every lookup saved counts."""
        contexts = self.contexts
        known = self.known
        kinds = self._kinds
        get_ident = threading.get_ident
        getframe = sys._getframe
        first_start = self._first_start
        kind_of = self._kind_of

        def on_start(code: CodeType, offset: int) -> Any:
            hit = known.get(id(code))
            if hit is None or hit[0] is not code:
                return first_start(code, getframe(1))
            context = contexts.get(get_ident())
            if context is not None:
                frame = getframe(1)
                if frame.f_back is context.entry:  # this run's VM, not a nested one
                    _begin(context, code, frame, hit[1])
            return None

        def on_yield(code: CodeType, offset: int, value: object) -> Any:
            context = contexts.get(get_ident())
            if context is None:
                return None
            call = context.calls.get(id(getframe(1)))
            if call is None or call.code is not code:
                call = _met_midway(context, code, getframe(1))
                if call is None:
                    return None
            call.offset = offset
            kind = kinds.get(type(value))
            if kind is None:
                kind = kind_of(type(value))
            if kind in (_EFFECT, _CARRIER):
                context.last = call
                context.pending = value if kind == _CARRIER else None
                parent = call.parent
                if parent is not None and parent.done:
                    _reparent(call)
                effect = value
                while True:  # once, or twice for an effect carrying an effect
                    try:
                        try:
                            text = repr(effect)
                        except Exception:
                            text = " at 0x"  # rendered from its fields below
                        if len(text) > MAX_EFFECT_CHARS or " at 0x" in text:
                            text = render_effect(effect)
                        buffer = context.buffer
                        buffer.append(
                            (
                                text,
                                _now(),
                                call.task,
                                call,
                                offset,
                                effect if type(effect) is context.slog_type else None,
                            )
                        )
                        if len(buffer) > MAX_BUFFERED:
                            context.on_full()
                    except Exception:  # tracing must never hurt the workflow
                        pass
                    if kind != _CARRIER:
                        break
                    # The effect it carries is performed in place, at once.
                    effect = getattr(value, "program", None)
                    kind = kinds.get(type(effect)) or kind_of(type(effect))
                    if kind not in (_EFFECT, _CARRIER):
                        break
                    kind = _EFFECT
            elif kind == _PROGRAM:
                context.last = call
                context.pending = value  # a Call node says the arguments of what starts
            return None

        def on_return(code: CodeType, offset: int, value: object) -> Any:
            context = contexts.get(get_ident())
            if context is not None:
                call = context.calls.pop(id(getframe(1)), None)
                if call is not None:
                    call.done = True
            return None

        def on_unwind(code: CodeType, offset: int, error: BaseException) -> Any:
            # A call that ends by raising: the error leaves it here, whether or not a
            # caller catches it. (Every frame's unwinding comes here: only known bodies
            # of this run's contexts are looked at.)
            context = contexts.get(get_ident())
            if context is not None:
                call = context.calls.pop(id(getframe(1)), None)
                if call is not None:
                    call.done = True
                    # GeneratorExit: closed, not failed.
                    if call.call_id and call.code is code and type(error) is not GeneratorExit:
                        try:
                            context.buffer.append(CallFailed(call.call_id, _now(), error))
                        except Exception:  # tracing must never hurt the workflow
                            pass
            return None

        return on_start, on_yield, on_return, on_unwind


def _begin(context: Context, code: CodeType, frame: FrameType, shown: bool) -> None:
    """A body starts: its caller is the call that yielded last in this task."""
    try:
        pending = context.pending
        if shown:
            call_id = context.next_id
            context.next_id = call_id + 1
            args = None
            if context.capture_args:
                if pending is not None and type(pending) is _CALL_NODE:
                    args = args_of_call(code, pending)
                if args is None:
                    args = args_of_frame(code, frame)
        elif pending is None:
            # One of doeff's own programs started by a handler for an effect (the memo
            # handler's storage calls, say), not by the workflow: not followed.
            context.calls.pop(id(frame), None)
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
    """A known body of this run yields whose start was not seen (it was forgotten when
    the table was full): it is followed from here on, its callers unknown."""
    try:
        known = _dispatcher.known.get(id(code)) if _dispatcher is not None else None
        if known is None or known[0] is not code or not known[1]:
            return None
        if frame.f_back is not context.entry:
            return None  # a body of another VM, or driven by Python code
        call_id = context.next_id
        context.next_id = call_id + 1
        call = Call(call_id, code, None, context.task, None, exact=False)
        context.calls[id(frame)] = call
        return call
    except Exception:
        return None


def _reparent(call: Call) -> None:
    """A handler body that outlived the call whose effect it answered (it resumed it,
    and that call returned): its callers are the nearest that are still running."""
    parent = call.parent
    while parent is not None and parent.done:
        call.parent_offset = parent.parent_offset
        parent = parent.parent
    call.parent = parent
    call.outer = None
    call.below = None


def _is_handler_body(code: CodeType, frame: FrameType) -> bool:
    """A handler body is called with the continuation (``k``) among its arguments."""
    from doeff_vm import K

    local = frame.f_locals
    count = code.co_argcount + code.co_kwonlyargcount
    return any(type(local.get(name)) is K for name in code.co_varnames[:count])


_CALL_NODE: type
_DISABLE: object
_LOCAL_EVENTS: int
_INTERNAL_DIRS: tuple[str, ...] = ()
_dispatcher: _Dispatcher | None = None


def dispatcher() -> _Dispatcher:
    """The process's dispatcher (created on first use: it imports doeff)."""
    global _dispatcher, _DISABLE, _LOCAL_EVENTS, _CALL_NODE
    if _dispatcher is None:
        import doeff_vm

        _CALL_NODE = doeff_vm.Call
        monitoring = _monitoring()
        _DISABLE = monitoring.DISABLE
        _LOCAL_EVENTS = monitoring.events.PY_YIELD | monitoring.events.PY_RETURN
        _dispatcher = _Dispatcher()
    return _dispatcher


def internal_dirs() -> tuple[str, ...]:
    """The directories of doeff's packages and of this one: the machinery, whose frames
    are not the workflow's (compared by path, so a project in a folder named ``doeff``
    is still the workflow)."""
    global _INTERNAL_DIRS
    if not _INTERNAL_DIRS:
        import doeff
        import doeff_core_effects
        import doeff_vm

        import doeff_flow_core

        _INTERNAL_DIRS = tuple(
            os.path.dirname(os.path.abspath(module.__file__ or "")) + os.sep
            for module in (doeff, doeff_vm, doeff_core_effects, doeff_flow_core)
        )
    return _INTERNAL_DIRS


def _monitoring() -> Any:
    """``sys.monitoring`` (Python 3.12+; the type checker targets 3.11)."""
    return getattr(sys, "monitoring", None)


def monitoring_available() -> bool:
    return sys.version_info >= (3, 12)
