"""``flowctl status``: whether flowd runs, and what it is doing.

Running: its pid, version, uptime, socket, workflows and roots (``ping``) and the
OpenTelemetry exporter's counters (``stats``: every member of its ``otlp`` object, the
best known first, in a fixed order), exit 0. Not running (nothing answers on the socket,
or nothing this user can trust): ``flowd is not running (reading files)``, exit 3, as
``systemctl status`` and ``supervisorctl status`` say a service is stopped.
"""

from __future__ import annotations

import json
from typing import Any, Final

from doeff_flow_core.escape import safe
from doeff_flow_core.protocol import PING, STATS
from flowctl import exitcodes
from flowctl.console import Console
from flowctl.errors import DaemonUnavailable
from flowctl.options import Request
from flowctl.sources.base import Source
from flowctl.sources.connect import socket_path
from flowctl.sources.daemon import DaemonSource
from flowctl.sources.rpc import Connection

# The exporter's members shown first, in this order; any other after them, sorted.
OTLP_ORDER: Final = (
    "endpoint",
    "state",
    "produced_spans",  # = sent + dropped + rejected + queued
    "sent_spans",
    "dropped_spans",
    "rejected_spans",
    "queued",
    "queue_limit",
    "queue_weight",
    "queue_weight_limit",
    "failed_requests",
    "last_error",
)
FACTS: Final = ("pid", "version", "uptime", "socket", "workflows", "roots")


def run_status(console: Console, request: Request, source: Source) -> int:
    answer = _ask(source) if isinstance(source, DaemonSource) else None
    if answer is None:
        return _not_running(console, request, source)
    if request.options.json:
        console.out.write(json.dumps({"running": True, **answer}) + "\n")
    else:
        console.out.write("".join(safe(line) + "\n" for line in status_lines(answer)))
    console.out.flush()
    return exitcodes.OK


def _ask(source: DaemonSource) -> dict[str, Any] | None:
    """What flowd says of itself, or None when it stopped answering meanwhile."""
    try:
        with Connection(source.socket_path) as conn:
            pong = conn.call(PING)
            stats = conn.call(STATS)
    except DaemonUnavailable:
        return None
    pong = pong if isinstance(pong, dict) else {}
    otlp = stats.get("otlp") if isinstance(stats, dict) else None
    answer = {key: pong.get(key) for key in FACTS if key != "socket"}
    answer["socket"] = source.socket_path
    answer["otlp"] = otlp if isinstance(otlp, dict) else None
    return answer


def _not_running(console: Console, request: Request, source: Source) -> int:
    where = str(socket_path(request.options.socket))
    if request.options.json:
        answer = {"running": False, "socket": where, "reading": source.location}
        console.out.write(json.dumps(answer) + "\n")
    else:
        console.out.write(
            "flowd is not running (reading files)\n"
            f"  {'socket':<10} {safe(where)} (nothing answers)\n"
            f"  {'files':<10} {safe(source.location)}\n"
        )
    console.out.flush()
    return exitcodes.NOT_RUNNING


def status_lines(answer: dict[str, Any]) -> list[str]:
    """The text of ``flowctl status``; every value is flowd's word, so shown escaped."""
    lines = [f"flowd is running (pid {safe(str(answer.get('pid')))})"]
    otlp = answer.get("otlp")
    keys = otlp_keys(otlp) if isinstance(otlp, dict) else []
    width = max([len(key) for key in FACTS] + [len("otlp " + key) for key in keys])
    for key in FACTS:
        value = answer.get(key)
        if key == "uptime" and isinstance(value, int | float):
            value = _duration(float(value))
        lines.append(f"  {key:<{width}} {safe(str(value))}")
    if not isinstance(otlp, dict):
        lines.append(f"  {'otlp':<{width}} not exporting (no --otlp-endpoint)")
        return lines
    for key in keys:
        lines.append(f"  {'otlp ' + safe(key):<{width}} {safe(str(otlp[key]))}")
    return lines


def otlp_keys(otlp: dict[str, Any]) -> list[str]:
    """The exporter's members in a stable order: the known ones, then the rest sorted."""
    known = [key for key in OTLP_ORDER if key in otlp]
    return known + sorted(key for key in otlp if key not in OTLP_ORDER)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"
