"""Choosing the data source: flowd when its socket answers, else the trace files.

The socket is ``--socket``, else ``$DOEFF_FLOW_SOCKET``, else
``$XDG_RUNTIME_DIR/doeff-flow/flowd.sock``, else ``/tmp/doeff-flow-$UID/flowd.sock``.
A missing or dead daemon is not an error: flowctl reads files and says so only with
``--verbose``. A socket it will not trust (another user's or a shared directory, a
server of another uid) or an answer line over the bound is said in one line on stderr
always, since it is an attack or a misconfiguration to fix; flowctl then reads files.

Through flowd, a trace directory given explicitly (``--trace-dir`` or
``$DOEFF_FLOW_TRACE_DIR``) scopes what is shown to that directory, as the files would;
with neither, every workflow flowd indexes is shown.

A live view (``watch``, ``history --follow``) through flowd is ``resilient``: it goes on
from the trace files while flowd is away and back through flowd when it returns
(``failover``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from doeff_flow_core.locations import default_socket_path
from doeff_flow_core.tracefiles.layout import TRACE_DIR_ENV, default_trace_dir
from flowctl.errors import AnswerTooLong, DaemonUnavailable, DaemonUntrusted
from flowctl.options import GlobalOptions
from flowctl.sources.base import Source
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.failover import FailoverSource
from flowctl.sources.files import FileSource


def socket_path(explicit: str | None) -> Path:
    return Path(explicit) if explicit else default_socket_path()


def explicit_trace_dir(options: GlobalOptions) -> str | None:
    """``--trace-dir``, else ``$DOEFF_FLOW_TRACE_DIR``; None when neither is given."""
    return options.trace_dir or os.environ.get(TRACE_DIR_ENV) or None


def resilient(source: Source, options: GlobalOptions) -> Source:
    """The source for a live view: through flowd, going on from the trace files while
    flowd is away (``failover``); a source of files as it is."""
    if not isinstance(source, DaemonSource):
        return source
    explicit = explicit_trace_dir(options)
    return FailoverSource(source, FileSource(Path(explicit) if explicit else default_trace_dir()))


def open_source(options: GlobalOptions, err: TextIO) -> Source:
    explicit = explicit_trace_dir(options)
    trace_dir = Path(explicit) if explicit else default_trace_dir()
    sock = str(socket_path(options.socket))
    root = os.path.abspath(trace_dir) if explicit else None
    try:
        source = DaemonSource.connect(sock, root, str(trace_dir) if explicit else sock)
    except DaemonUnavailable as exc:
        if options.verbose or isinstance(exc, (DaemonUntrusted, AnswerTooLong)):
            print(f"flowctl: {exc}; reading trace files in {trace_dir}", file=err)
        return FileSource(trace_dir)
    if options.verbose:
        scope = f"workflows in {root}" if root else "every workflow it indexes"
        print(f"flowctl: reading through flowd (pid {source.pid}) at {sock}: {scope}", file=err)
    return source


def rechosen(current: Source, options: GlobalOptions, err: TextIO) -> Source:
    """The source a session (the shell) should use now: ``current`` while it is still
    what ``open_source`` would choose, else the new choice, said in one line. So a shell
    left open follows flowd going away (to the files) and coming back."""
    if isinstance(current, DaemonSource):
        if current.answers():
            return current
        current.close()
        fresh = open_source(options, err)
        print(f"flowctl: flowd went away; reading trace files in {fresh.location}", file=err)
        return fresh
    if not isinstance(current, FileSource) or not os.path.exists(socket_path(options.socket)):
        return current
    fresh = open_source(options, err)
    if isinstance(fresh, DaemonSource):
        print(f"flowctl: flowd is back at {fresh.socket_path}; reading through it", file=err)
        return fresh
    return current
