"""Records as text: pure functions, no I/O.

- ``text``: lines for ``ps``, ``history`` and plain ``watch`` (and their JSON).
- ``box``: the full-screen watch box and dashboard, as lines of styled fragments.
- ``escape``: untrusted text made safe to print; ``textwidth``: terminal column widths;
  ``timefmt``: clock times and ages.

Dependency rule: may import the standard library, ``doeff_flow_core``,
``flowctl.sources.base`` (the entries it draws) and ``flowctl.watch.state`` (the watch
view it draws); never a source's implementation, the commands, or ``prompt_toolkit``.
"""
