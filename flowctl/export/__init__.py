"""``flowctl export``: a workflow's timeline as Chrome Trace Event JSON, OTLP/JSON or SVG.

- ``command``: the trace read as a stream, its spans written in the chosen format.
- ``chrome``, ``svg``: spans in, text out (``timeaxis``: the SVG's ticks and labels).
- ``outfile``: an output file that appears whole or not at all.
(OTLP/JSON is the core's ``doeff_flow_core.timeline.otlp``.)

Dependency rule: may import the standard library, ``doeff_flow_core`` (``timeline``,
``tracefiles``), ``flowctl.errors`` and ``flowctl.render``'s helpers; never a source's
implementation, the commands, ``prompt_toolkit`` or ``flowd``.
"""
