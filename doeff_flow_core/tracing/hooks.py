"""The fallback tracer's pass-through handler (Python 3.11, or ``DOEFF_FLOW_TRACER=hooks``).

It claims each effect reaching it, with the stack doeff's ``GetTraceback`` gives; effects
nobody claims were answered inside the workflow and are written with their task's last
exact stack. ``doeff`` is imported when the handler is built.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from doeff_flow_core.render import MAX_EFFECT_CHARS, render_effect
from doeff_flow_core.tracing.monitor import MAX_BUFFERED

if TYPE_CHECKING:
    from doeff_flow_core.tracing.observer import TraceObserver


def _stack_handler(tracer: TraceObserver) -> Any:
    """The pass-through handler that claims each effect reaching it, with its stack.

    This runs once per effect, so the common cases are inlined: a repr that needs no
    cleaning, and a stack met before (``StackCache``). Entries hold only text and
    numbers, leaving the garbage collector nothing to trace.
    """
    from doeff import GetTraceback, Pass, do

    buffer = tracer._buffer
    now = time.time
    slog_type = tracer._slog_type
    by_site = tracer._stacks.by_site
    encode_stack = tracer._stacks.encode

    @do  # type: ignore[untyped-decorator]
    def doeff_flow_tracer(effect: Any, k: Any) -> Any:
        frames = yield GetTraceback(k)
        try:
            text = repr(effect)
            if len(text) > MAX_EFFECT_CHARS or " at 0x" in text:
                text = render_effect(effect)
            inner = frames[0] if frames else None
            hit = by_site.get((inner[2], inner[1])) if inner else None
            stack = hit[1] if hit is not None and hit[0] == frames else encode_stack(frames)
            # An entry as RecordEncoder.running reads it.
            entry = (text, now(), tracer.task, stack, effect if type(effect) is slog_type else None)
            if buffer and buffer[-1] is effect:
                buffer[-1] = entry
                if len(buffer) > MAX_BUFFERED:
                    tracer._hand_over()
            else:
                tracer._claim_earlier(effect, entry)
        except Exception:  # tracing must never hurt the workflow
            pass
        return (yield Pass(effect, k))

    return doeff_flow_tracer
