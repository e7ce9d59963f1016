"""systemd integration with the standard library only.

- Socket activation: ``LISTEN_FDS``/``LISTEN_PID`` hand flowd its listening socket as
  file descriptor 3 (SD_LISTEN_FDS_START).
- Notification: datagrams to ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
  namespace): ``READY=1``, ``STOPPING=1``, and ``WATCHDOG=1`` every half
  ``WATCHDOG_USEC`` when the service has a watchdog.

Nothing here fails the daemon: without systemd each function does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Final

from flowd.errors import BadInheritedSocket

log = logging.getLogger("flowd")

LISTEN_FDS_START: Final = 3
_LISTEN_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed to this process, if it passed one."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in _LISTEN_VARIABLES:  # not for our children
        os.environ.pop(name, None)
    if count is None:
        return None
    if pid is None or not pid.isdigit() or int(pid) != os.getpid():
        log.info("LISTEN_FDS is set for process %s, not this one; ignoring it", pid)
        return None
    if not count.isdigit() or int(count) < 1:
        raise BadInheritedSocket(f"LISTEN_FDS={count!r}")
    if int(count) > 1:
        log.warning("LISTEN_FDS=%s: using file descriptor 3 only", count)
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise BadInheritedSocket(f"file descriptor 3: {exc.strerror or exc}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BadInheritedSocket("file descriptor 3 is not a Unix stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise BadInheritedSocket("file descriptor 3 is not listening")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


class Notifier:
    """Sends state changes to the service manager, when there is one."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as exc:
            log.warning("NOTIFY_SOCKET: cannot send %s: %s", state, exc.strerror or exc)
            return False
        return True


def watchdog_interval() -> float | None:
    """How often to send WATCHDOG=1 (half the watchdog timeout), or None for never."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
