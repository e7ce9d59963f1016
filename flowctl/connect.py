"""Choosing the data source: the daemon when one answers, else the trace files.

A missing daemon is not an error: flowctl reads files and says so only with
``--verbose``. This version has no daemon client yet, so it always reads files; the
socket is still resolved (``--socket``, ``$DOEFF_FLOW_SOCKET``,
``$XDG_RUNTIME_DIR/doeff-flow/flowd.sock``, ``/tmp/doeff-flow-$UID/flowd.sock``) so
``--verbose`` can say which one was passed over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from doeff_flow_core import default_trace_dir
from flowctl.filesource import FileSource
from flowctl.options import GlobalOptions
from flowctl.source import Source

SOCKET_ENV = "DOEFF_FLOW_SOCKET"


def socket_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "doeff-flow" / "flowd.sock"
    return Path(f"/tmp/doeff-flow-{os.getuid()}") / "flowd.sock"


def open_source(options: GlobalOptions, err: TextIO) -> Source:
    trace_dir = Path(options.trace_dir) if options.trace_dir else default_trace_dir()
    if options.verbose:
        sock = socket_path(options.socket)
        why = "this flowctl has no daemon client yet" if sock.exists() else "no daemon there"
        print(f"flowctl: socket {sock}: {why}; reading trace files in {trace_dir}", file=err)
    return FileSource(trace_dir)
