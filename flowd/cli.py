"""The ``flowd`` command: options, logging, startup and shutdown.

flowd [--socket PATH] [--root DIR ...] [--log-level L] [--watcher auto|inotify|poll]
      [--stall-timeout S] [--otlp-endpoint URL [--otlp-header K=V ...]]
flowd install-units [--user | --system] [--dry-run] [--force]

Logs one line per event to stderr. SIGTERM (or SIGINT) stops it: STOPPING=1 to systemd,
the socket file removed (unless systemd owns it), the spans queued for the collector
sent (for up to a few seconds), exit 0. A failure to start is one line on stderr and
exit 1; wrong OpenTelemetry settings are not: flowd serves on, exporting nothing.

``install-units`` writes flowd.socket and flowd.service running this flowd (see
flowd/units.py) and prints the systemctl commands that start it: exit 0; 1 when they
cannot be written; 3 when a unit with other text is there (--force replaces it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys
from argparse import SUPPRESS
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import anyio
from anyio import CancelScope

from doeff_flow_core.locations import default_socket_path
from flowd import units
from flowd.daemon import Daemon
from flowd.errors import StartupError, UnitExists, UnitsError
from flowd.logs import EscapingFormatter
from flowd.otlp.exporter import TIMEOUT, Exporter, exporter_from
from flowd.otlp.queue import QUEUE_LIMIT
from flowd.outbox import STALL_SECONDS
from flowd.rpc import RpcInterface, version
from flowd.server import Server, bind_socket, remove_socket, socket_inode
from flowd.systemd import Notifier, inherited_socket, watchdog_interval

OK: Final = 0
START_FAILED: Final = 1
USAGE: Final = 2  # argparse's own
UNITS_EXIST: Final = 3  # install-units: a unit with other text is there
INSTALL_UNITS: Final = "install-units"
YOUNG_COLLECTION: Final = 20_000  # allocations between collections (Python's default: 700)

log = logging.getLogger("flowd")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowd",
        description="Index every doeff-flow trace directory; answer JSON-RPC on a Unix socket.",
        epilog=f"flowd {INSTALL_UNITS} [--user|--system] [--dry-run] [--force]: write the "
        "systemd units that start this flowd (see flowd install-units --help)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="socket path (default: $DOEFF_FLOW_SOCKET, else "
        "$XDG_RUNTIME_DIR/doeff-flow/flowd.sock, else /tmp/doeff-flow-$UID/flowd.sock)",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        action="append",
        default=[],
        help="a trace directory to index, besides the registered ones (repeatable)",
    )
    p.add_argument(
        "--log-level",
        metavar="L",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="debug, info (default), warning or error",
    )
    p.add_argument(
        "--watcher",
        default="auto",
        choices=["auto", "inotify", "poll"],
        help="how to notice changes: inotify when available (auto), or polling",
    )
    p.add_argument(
        "--stall-timeout",
        metavar="S",
        type=float,
        default=STALL_SECONDS,
        help="cut off a client that reads nothing for S seconds while records wait for it "
        f"(default {STALL_SECONDS:g})",
    )
    p.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send finished spans to this OpenTelemetry collector (OTLP/HTTP, JSON); "
        "a URL with no path gets /v1/traces (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
        "else $OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else no export)",
    )
    p.add_argument(
        "--otlp-header",
        metavar="K=V",
        action="append",
        default=[],
        help="an HTTP header for the collector, e.g. an API key (repeatable; added to "
        "$OTEL_EXPORTER_OTLP_HEADERS)",
    )
    # limits for tests, not for users
    p.add_argument("--otlp-queue", type=_positive_int, default=QUEUE_LIMIT, help=SUPPRESS)
    p.add_argument("--otlp-timeout", type=float, default=TIMEOUT, help=SUPPRESS)
    p.add_argument("--version", action="version", version=f"flowd {version()}")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def raise_file_limit() -> None:
    """As many connections as the hard limit on open files allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open files limit: %s", exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [INSTALL_UNITS]:
        return install_units(argv[1:])
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    raise_file_limit()
    try:
        return anyio.run(serve, args)
    except StartupError as exc:
        print(f"flowd: {exc}", file=sys.stderr)
        return START_FAILED


def units_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"flowd {INSTALL_UNITS}",
        description="Write flowd.socket and flowd.service, running this flowd by its "
        "absolute path, and print the systemctl commands that start it.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--user",
        action="store_false",
        dest="system",
        help="for this user, in $XDG_CONFIG_HOME/systemd/user (default ~/.config/systemd/user)",
    )
    where.add_argument(
        "--system",
        action="store_true",
        help=f"for every user, in {units.SYSTEM_DIR} (user units all users' managers run; "
        "flowd must be installed where only root can change it)",
    )
    p.set_defaults(system=False)  # --user's store_false would make True the default
    p.add_argument("--dry-run", action="store_true", help="print the units; write nothing")
    p.add_argument("--force", action="store_true", help="replace units that have other text")
    p.add_argument("--unit-dir", type=Path, help=SUPPRESS)  # for tests, not for users
    return p


def install_units(argv: list[str]) -> int:
    args = units_parser().parse_args(argv)
    if args.system:
        directory = args.unit_dir or units.SYSTEM_DIR
    else:
        directory = args.unit_dir or units.user_dir(os.environ, Path.home())
    try:
        command = units.running_program(sys.argv[0], sys.executable)
        texts = units.unit_texts(units.exec_line(command))
        if args.system:
            units.check_shared(command, units.packages())
        if args.dry_run:
            for name, text in texts.items():
                print(f"### {directory / name}\n{text}")
            return OK
        outcome = units.install(directory, texts, args.force)
    except UnitsError as exc:
        print(f"flowd: {exc}", file=sys.stderr)
        return UNITS_EXIST if isinstance(exc, UnitExists) else START_FAILED
    for name, what in outcome.items():
        print(f"{directory / name}: {what}")
    print(f"ExecStart={units.exec_line(command)}")
    print("to start flowd on the first connection:")
    for line in units.enable_commands(args.system):
        print(f"  {line}")
    return OK


def _quiet_cancelled_reads() -> None:
    """Log the event loop's callback errors as ours, less one known harmless race.

    anyio's asyncio backend waits for a Unix socket to be readable with
    ``loop.add_reader(fd, future.set_result, None)``; when a connection closes while its
    read is cancelled, the callback can still fire on the cancelled future, and asyncio
    reports ``InvalidStateError`` from ``Future.set_result``. Nothing is lost then.
    """
    loop = asyncio.get_running_loop()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        error = context.get("exception")
        if isinstance(error, asyncio.InvalidStateError) and "Future.set_result" in str(
            context.get("handle")
        ):
            log.debug("a cancelled read woke up late (harmless)")
            return
        log.error("event loop: %s: %r", context.get("message"), error)

    loop.set_exception_handler(handle)


async def serve(args: argparse.Namespace) -> int:
    _quiet_cancelled_reads()
    notifier = Notifier()
    path: Path | None = None
    sock = inherited_socket()
    if sock is None:
        path = Path(args.socket) if args.socket else default_socket_path()
        sock = bind_socket(path)
        inode = socket_inode(path)
        log.info("listening on %s", path)
    else:
        log.info("listening on the inherited socket %s", _name(sock))
    otlp = exporter_from(
        args.otlp_endpoint, args.otlp_header, os.environ, args.otlp_queue, args.otlp_timeout
    )
    daemon = Daemon(args.root, args.watcher, otlp.feed if otlp is not None else None)
    # the exporter outlives the daemon's tasks: it sends what is queued once they stopped
    async with anyio.create_task_group() as exporting:
        if otlp is not None:
            exporting.start_soon(otlp.run)
        try:
            await _serve(daemon, sock, notifier, args.stall_timeout, otlp)
        finally:
            if path is not None:
                remove_socket(path, inode)
            daemon.close()
        if otlp is not None:
            await otlp.close()
        exporting.cancel_scope.cancel()
    log.info("stopped")
    return OK


async def _serve(
    daemon: Daemon,
    sock: socket.socket,
    notifier: Notifier,
    stall_timeout: float,
    otlp: Exporter | None,
) -> None:
    """Index, answer and keep the index current until SIGTERM or SIGINT."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, signals, notifier, group.cancel_scope)
            await daemon.load()
            # the index is mostly long-lived and acyclic: keep the collector off it
            gc.freeze()
            # Each record read makes short-lived containers (and the exporter's spans wait
            # for their batch): at the default 700 the collector ran dozens of times a
            # second at 10,000 records/s, for over half a point of a core.
            gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])
            server = Server(RpcInterface(daemon, otlp), daemon.hub, stall_timeout)
            group.start_soon(server.serve, sock)
            group.start_soon(daemon.run)
            interval = watchdog_interval()
            if interval is not None and notifier.enabled:
                group.start_soon(_watchdog, notifier, interval)
            notifier.notify("READY=1")
            log.info(
                "ready: %d workflows under %d roots (pid %d, %s)",
                len(daemon.index),
                len(daemon.index.roots),
                os.getpid(),
                daemon.watcher,
            )


async def _stop_on_signal(
    signals: AsyncIterator[int], notifier: Notifier, scope: CancelScope
) -> None:
    async for signum in signals:
        log.info("%s: stopping", signal.Signals(signum).name)
        notifier.notify("STOPPING=1")
        scope.cancel()
        return


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.notify("WATCHDOG=1")
        await anyio.sleep(interval)


def _name(sock: socket.socket) -> str:
    name = sock.getsockname()
    return name if isinstance(name, str) and name else repr(name)


if __name__ == "__main__":
    sys.exit(main())
