"""Floods of ``watch`` requests on real sockets, for the tests and the fault suite.

``flood`` pipelines ``count`` watches for ids nobody writes on one new connection,
reading the answers on a thread as they come, and returns once every one is answered,
with the connection still open (``Flood.leave`` closes it). ``warm_up`` makes the
baseline a flood's memory is compared with.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.rpc import Client

BATCH = 1000  # requests sent in one write


@dataclass
class Flood:
    sock: socket.socket
    sent: int
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by the error's data.scope
    other: list[dict[str, object]] = field(default_factory=list)  # any other answer

    @property
    def answered(self) -> int:
        return self.accepted + sum(self.refused.values()) + len(self.other)

    def leave(self) -> None:
        """Close the connection (shut down first: the reading thread lets go of it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _request(ident: int, workflow_id: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"method":"watch","params":{"workflow_id":"%s"}}\n' % (
        ident,
        workflow_id.encode(),
    )


def _read(flood: Flood) -> None:
    buffer = b""
    while True:
        try:
            data = flood.sock.recv(1 << 20)
        except OSError:
            return
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            error = message.get("error")
            if "result" in message and "subscription" in message["result"]:
                flood.accepted += 1
            elif isinstance(error, dict) and error.get("code") == -32005:
                scope = str(error.get("data", {}).get("scope"))
                flood.refused[scope] = flood.refused.get(scope, 0) + 1
            else:
                flood.other.append(message)


def flood(path: Path, count: int, name: str, timeout: float = 120) -> Flood:
    """``count`` watches for ids ``<name>-<n>`` on a new connection, every one answered."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    result = Flood(sock, count)
    reader = threading.Thread(target=_read, args=(result,), daemon=True)
    reader.start()
    for first in range(0, count, BATCH):
        last = min(first + BATCH, count)
        sock.sendall(b"".join(_request(i, f"{name}-{i}") for i in range(first, last)))
    deadline = time.monotonic() + timeout
    while result.answered < count and reader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


def warm_up(path: Path, clients: int) -> None:
    """Serve ``clients`` clients at once, as a flowd in use has: a baseline for its memory
    (the event loop's own tables grow to that once, and stay). Each lists, watches and
    unwatches, then they all leave."""
    opened = [Client(path) for _ in range(clients)]
    try:
        for client in opened:
            client.call("ps")
            client.call(
                "unwatch", subscription=client.call("watch", workflow_id="w")["subscription"]
            )
    finally:
        for client in opened:
            client.close()
    time.sleep(0.5)
