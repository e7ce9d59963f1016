"""``flowctl export``: a workflow's timeline as Chrome Trace Event JSON, OTLP/JSON or SVG,
and where its time went as folded stacks or a speedscope file.

- ``command``: the trace read as a stream, its spans written in the chosen format;
  ``ending``: how a run with no terminal record stands (lost, unknown, still running).
- ``chrome``, ``svg``: spans in, text out (``svg_layout``: the lanes and their packing;
  ``timeaxis``: the SVG's ticks and labels).
- ``folded``, ``speedscope``: spans in, flame graphs out.
- ``outfile``: an output file that appears whole or not at all.
(OTLP/JSON is the core's ``doeff_flow_core.timeline.otlp``.)

Dependency rule: may import the standard library, ``doeff_flow_core`` (``timeline``,
``tracefiles``), ``flowctl.errors`` and ``flowctl.render``'s helpers; never a source's
implementation, the commands, ``prompt_toolkit`` or ``flowd``.
"""
