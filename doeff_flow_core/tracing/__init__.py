"""The tracer: records of each effect a doeff workflow performs, with its stack.

- ``observer``: ``TraceObserver`` / ``trace_observer``: a run's trace file, buffer, flusher
  and terminal record; it picks one of the two ways to see effects below.
- ``monitor`` (Python 3.12+): the shadow stack kept from the interpreter's generator
  events, with ``stacktext`` (a call's stack as JSON) and ``args`` (its arguments).
- ``hooks`` (Python 3.11, or ``DOEFF_FLOW_TRACER=hooks``): doeff's ``WithObserve`` and a
  pass-through handler asking ``GetTraceback``.
- ``routing``: which run owns the task the scheduler runs now.

Dependency rule: standard library only at import time, like the rest of
``doeff_flow_core``; ``doeff`` is imported when a run is traced.
"""

from doeff_flow_core.tracing.observer import TraceObserver, raise_site, trace_observer

__all__ = ["TraceObserver", "raise_site", "trace_observer"]
