"""Timelines: a trace's records as spans, and spans as OTLP.

- ``spans``: ``SpanBuilder`` / ``spans_of``: records in, nested spans out (one per
  ``@do`` call, a workflow span per run), incrementally and in bounded memory.
- ``otlp``: spans as an OTLP/JSON ``ExportTraceServiceRequest``, with ids derived from
  the workflow id, the run and the span's number; shared by ``flowctl export`` and
  flowd's exporter, so both give the same ids.

Dependency rule: standard library only, like the rest of ``doeff_flow_core``; within the
core it uses the records (``doeff_flow_core.records``) and nothing that writes or traces.
"""
