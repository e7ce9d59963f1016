"""Exit codes of ``flowctl`` and ``doeff-flow``; every command returns one of these.

====  ===============  ==========================================================
code  name             meaning
====  ===============  ==========================================================
0     OK               success; also leaving ``watch`` with ``q`` or Ctrl-C when
                       ``--exit-on-complete`` was not given; plain ``watch WF`` of a
                       workflow that had already completed
1     WORKFLOW_FAILED  ``watch --exit-on-complete``: the workflow failed or was lost
                       (with no WF: some workflow failed or was lost); plain ``watch
                       WF`` (not on a terminal) of a workflow that had already failed
                       or been lost; ``run``: the program failed, or its module
                       raised on import
2     USAGE            bad arguments, an invalid workflow id, no command when not
                       on a terminal; ``run``: a malformed program reference or one
                       that names no program; ``roots add``: a directory that may not
                       be a root (/, /proc, /sys, /dev and under them, another user's);
                       ``history``/``profile --run``: a prefix of more than one run; a workflow id
                       found in two registered trace directories (no --trace-dir: say
                       which); ``ps --all`` with ``--trace-dir``
3     NOT_FOUND        an unknown workflow, a missing trace directory; ``history``/``profile
                       --run``: no such run (the runs are listed); ``run``: no
                       such module or attribute; ``roots add``: no such directory,
                       ``roots remove``: not a root; ``status`` (NOT_RUNNING): flowd
                       is not running (as ``systemctl status`` says of a stopped unit)
4     BAD_TRACE        a trace with no readable record, or malformed lines skipped
                       (the readable records and the other workflows are still shown)
5     UNAVAILABLE      the trace directory or a trace cannot be read (permissions,
                       I/O error); ``run``: another process traces that workflow id;
                       ``roots``: the state directory's lists cannot be changed
70    INTERNAL         a bug in flowctl; one line on stderr (``--verbose``: traceback)
73    CANNOT_WRITE     ``export -o FILE``: FILE cannot be written (no such directory,
                       permissions, a directory in the way, disk full); nothing is left;
                       ``run``: the trace cannot be created, the program does not start
130   INTERRUPTED      Ctrl-C in a one-shot command; or the user left
                       ``watch --exit-on-complete`` before the workflow ended
====  ===============  ==========================================================

Errors are reported as one line on stderr, ``flowctl: <what went wrong>`` (``doeff-flow:``
when run under that name).
"""

from __future__ import annotations

from typing import Final

OK: Final = 0
WORKFLOW_FAILED: Final = 1
USAGE: Final = 2
NOT_FOUND: Final = 3
NOT_RUNNING: Final = NOT_FOUND  # ``status``: flowd is not running
BAD_TRACE: Final = 4
UNAVAILABLE: Final = 5
INTERNAL: Final = 70
CANNOT_WRITE: Final = 73  # sysexits' EX_CANTCREAT, as INTERNAL is its EX_SOFTWARE
INTERRUPTED: Final = 130
