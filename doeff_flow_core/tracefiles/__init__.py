"""Trace files on disk: the one place that knows their layout and how to open, read,
follow and write them.

``layout``   names and paths: ``<trace_dir>/<workflow_id>/trace.jsonl``, its rotated
             parts ``trace.jsonl.N`` and ``writer.lock``.
``safeopen`` every open: relative to a directory descriptor, never through a symbolic
             link, never blocking, regular files only.
``lines``    raw lines with their byte offsets, forwards and backwards, bounded whatever
             a file holds (huge lines, sparse files).
``chain``    the rotated parts of one trace, as they stood at one moment.
``cursor``   a position in that chain that reads on across rotation.
``reading``  records: a trace's last ones, all of them, new ones as they land.
``scan``     a trace directory's workflows, each with its latest record.

Dependency rule: the standard library and ``doeff_flow_core``'s records, ids and errors
only; nothing here imports doeff, flowd or flowctl.
"""
