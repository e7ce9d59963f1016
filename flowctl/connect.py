"""Choosing the data source: the daemon when one answers, else the trace files.

A missing daemon is not an error: flowctl reads files and says so only with
``--verbose``. This version has no daemon client yet, so it always reads files; the
socket is still resolved (``--socket``, ``$DOEFF_FLOW_SOCKET``,
``$XDG_RUNTIME_DIR/doeff-flow/flowd.sock``, ``/tmp/doeff-flow-$UID/flowd.sock``) so
``--verbose`` can say which one was passed over.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from doeff_flow_core import default_trace_dir
from doeff_flow_core.layout import default_socket_path
from flowctl.filesource import FileSource
from flowctl.options import GlobalOptions
from flowctl.source import Source


def socket_path(explicit: str | None) -> Path:
    return Path(explicit) if explicit else default_socket_path()


def open_source(options: GlobalOptions, err: TextIO) -> Source:
    trace_dir = Path(options.trace_dir) if options.trace_dir else default_trace_dir()
    if options.verbose:
        sock = socket_path(options.socket)
        why = "this flowctl has no daemon client yet" if sock.exists() else "no daemon there"
        print(f"flowctl: socket {sock}: {why}; reading trace files in {trace_dir}", file=err)
    return FileSource(trace_dir)
