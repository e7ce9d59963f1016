"""flowctl: see where running doeff workflows are, from another terminal.

``flowctl ps``, ``history``, ``watch``, ``prune``, ``export`` and an interactive ``shell``
(also reachable as ``doeff-flow watch|ps|history``) over one data-source interface
(``flowctl.source``): ``DaemonSource`` asks flowd over its socket when it answers,
``FileSource`` reads the trace files otherwise (``flowctl.connect`` chooses).

Dependency rule: flowctl imports the standard library, ``doeff_flow_core`` and
``prompt_toolkit`` (the latter only for the shell and the full-screen watch). It never
imports ``flowd`` (it speaks to the daemon through its socket protocol only) and never
imports ``doeff``.
"""

__all__: list[str] = []
