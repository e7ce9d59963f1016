"""A plain JSON-RPC client for flowd's socket: JSON lines out, JSON lines in.

Used by the tests, the fault suite and the benchmarks. A connection flowd closed is
``ConnectionError`` (an ``OSError``); a line that is not a JSON object is ``ValueError``.
"""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

RECEIVE_BYTES = 1 << 22


class Client:
    """One connection to flowd. ``request`` returns the whole response, keeping the
    ``trace`` notifications that arrive meanwhile (``trace`` hands them out)."""

    _ids = itertools.count(1)

    def __init__(self, path: Path, timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise
        self.buffer = b""
        self.notifications: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def send(self, message: object) -> None:
        self.send_line(json.dumps(message).encode())

    def read_line(self) -> bytes | None:
        """The next line from the daemon, or None when it closed the connection."""
        chunks = [self.buffer]
        while b"\n" not in chunks[-1]:
            data = self.sock.recv(RECEIVE_BYTES)
            if not data:
                self.buffer = b"".join(chunks)
                return None
            chunks.append(data)
        line, self.buffer = b"".join(chunks).split(b"\n", 1)
        return line

    def read(self) -> dict[str, Any]:
        line = self.read_line()
        if line is None:
            raise ConnectionError("the daemon closed the connection")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"not a JSON object: {line[:200]!r}")
        return message

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """The whole response (result or error); notifications meanwhile are kept."""
        ident = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        while True:
            reply = self.read()
            if reply.get("method") == "trace":
                self.notifications.append(reply)
                continue
            assert reply.get("id") == ident, reply
            return reply

    def call(self, method: str, **params: Any) -> Any:
        """The result; AssertionError on an error response."""
        reply = self.request(method, params or None)
        assert "result" in reply, reply
        return reply["result"]

    def raw_call(self, method: str, **params: Any) -> bytes:
        """The next line after sending the request, unparsed (for timing round trips)."""
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        self.send(message)
        line = self.read_line()
        if line is None:
            raise ConnectionError("the daemon closed the connection")
        return line

    def error(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = self.request(method, params)
        assert "error" in reply, reply
        error = reply["error"]
        assert isinstance(error, dict)
        return error

    def trace(self) -> dict[str, Any]:
        """The next ``trace`` notification's params."""
        if self.notifications:
            return self.notifications.pop(0)["params"]  # type: ignore[no-any-return]
        message = self.read()
        assert message.get("method") == "trace", message
        params = message["params"]
        assert isinstance(params, dict)
        return params

    def traces_until(self, workflow_id: str, status: str = "completed") -> list[dict[str, Any]]:
        """Notifications' params up to and including ``workflow_id``'s ``status`` record."""
        got = []
        while True:
            params = self.trace()
            got.append(params)
            if params["workflow_id"] == workflow_id and params["record"]["status"] == status:
                return got
