"""flowctl: see where running doeff workflows are, from another terminal.

``flowctl ps``, ``history``, ``watch``, ``prune``, ``export``, ``run`` and an interactive
``shell`` (also reachable as ``doeff-flow watch|ps|history``) over one data-source
interface (``flowctl.sources``): ``DaemonSource`` asks flowd over its socket when it
answers, ``FileSource`` reads the trace files otherwise (``sources.connect`` chooses).

Modules: ``cli`` (the entry points), ``options`` (the command line and the commands'
vocabulary), ``commands`` (what each command does, and the one dispatcher), ``console``
(where a command writes), ``shell``, ``prune``, ``runprogram``, ``errors``, ``exitcodes``.
Subpackages: ``sources`` (files | daemon), ``watch``, ``render`` (records as text) and
``export`` (timelines).

Dependency rule: flowctl imports the standard library, ``doeff_flow_core`` and
``prompt_toolkit`` (the latter only for the shell and the full-screen watch). It never
imports ``flowd`` (it speaks to the daemon through its socket protocol only) and never
imports ``doeff``. Each subpackage states what it may import. Imports between flowctl's
modules form no cycle: ``commands`` imports the subsystems it runs (the shell among
them), and the shell is handed the dispatcher rather than importing it.
"""

__all__: list[str] = []
