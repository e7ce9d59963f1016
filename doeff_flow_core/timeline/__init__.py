"""Timelines: a trace's records as spans, spans as OTLP, and spans as profiles.

- ``spans``: ``SpanBuilder`` / ``spans_of``: records in, nested spans out (one per
  ``@do`` call, a workflow span per run), incrementally and in bounded memory. What a
  span is lives in ``span``; a run being built in ``openrun`` (its open calls in
  ``opencall``), and how a failure is traced through its tasks from the raise site when
  the writer did not say, in ``failures``.
- ``otlp``: spans as an OTLP/JSON ``ExportTraceServiceRequest``, with ids derived from
  the workflow id, the run and the span's number; shared by ``flowctl export`` and
  flowd's exporter, so both give the same ids.
- ``profile``: ``profile_of`` / ``profiles_of``: spans in, where a run's time went per
  function or call site (own and total time, calls, effect waits), in bounded memory.

``profile_of``, ``profiles_of``, ``Profile``, ``Entry`` and ``spans_of`` are importable
from here (and from ``doeff_flow_core``).

Dependency rule: standard library only, like the rest of ``doeff_flow_core``; within the
core it uses the records (``doeff_flow_core.records``) and nothing that writes or traces.
"""

from doeff_flow_core.timeline.profile import Entry, NoRun, Profile, profile_of, profiles_of
from doeff_flow_core.timeline.spans import Span, spans_of

__all__ = ["Entry", "NoRun", "Profile", "Span", "profile_of", "profiles_of", "spans_of"]
