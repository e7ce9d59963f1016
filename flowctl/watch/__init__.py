"""``flowctl watch``: one workflow, or the dashboard of all.

- ``model``: what a watch shows, independent of how (``WorkflowWatch``,
  ``DashboardWatch``): polls its feed, keeps the effective status fresh.
- ``state``: what a watch knows of one workflow, folded from a feed's updates (pure).
- ``dashboard``: the dashboard's selection, filters and keys, and its picture (pure).
- ``plain``: plain lines, one per change (output not a terminal, or ``--json``).
- ``screen``: the full-screen prompt-toolkit view.

Dependency rule: may import the standard library, ``doeff_flow_core``,
``flowctl.sources.base``, ``flowctl.render`` and ``flowctl.exitcodes``; only ``screen``
imports ``prompt_toolkit``. Never the commands, never ``flowd``.
"""
