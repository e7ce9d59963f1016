"""Records as text: pure functions, no I/O.

- ``text``: lines for ``ps``, ``history`` and plain ``watch`` (and their JSON).
- ``box``: the full-screen watch box and dashboard, as lines of styled fragments.
- ``textwidth``: terminal column widths; ``timefmt``: clock times and ages.

Untrusted text is escaped by the core's ``doeff_flow_core.escape``, the one function flowd's
log lines go through too.

Dependency rule: may import the standard library, ``doeff_flow_core``,
``flowctl.sources.base`` (the entries it draws) and ``flowctl.watch.state`` (the watch
view it draws); never a source's implementation, the commands, or ``prompt_toolkit``.
"""
