"""A JSON-RPC 2.0 client for flowd's Unix socket, standard library only.

Newline-delimited JSON, one message per line each way; lines end at ``\\n`` only (a
record may hold U+2028, so nothing here splits on other line ends). One ``Connection``
is one socket: ``call`` sends a request and waits for its answer, keeping the ``trace``
notifications that arrive meanwhile; ``pushed`` returns those and waits for more.
Failing to reach or to hear flowd is ``DaemonUnavailable``; an error answer is
``RpcFailure`` with flowd's code, message and data.

Only a daemon this user can trust is spoken to (DaemonUntrusted otherwise, before any
byte is sent): the socket's directory passes ``check_socket_dir`` (a real directory of
this user's, mode 0700 or stricter) and the server's uid (SO_PEERCRED) is this user's or
root's. A line may be at most MAX_LINE bytes, and the notifications that arrive while
an answer is awaited KEPT_BYTES: past either, the connection is dropped as the bytes
arrive (AnswerTooLong), never held whole.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any, Final

from doeff_flow_core.errors import UnsafeSocketDir
from doeff_flow_core.locations import check_socket_dir
from flowctl.errors import AnswerTooLong, DaemonError, DaemonUnavailable, DaemonUntrusted

CONNECT_TIMEOUT: Final = 0.5  # a socket nobody accepts on is given up after this
CALL_TIMEOUT: Final = 30.0  # an answer (ps over 10,000 workflows takes ~20 ms)
RECEIVE_BYTES: Final = 1 << 20
# What one poll of pushed notifications reads at most, so a busy stream never starves
# the caller.
PUSHED_BYTES_PER_POLL: Final = 8 << 20
# The notifications kept while ``call`` waits for its answer, at most: as much as one poll
# reads (flowd sends one per new record: a few MB while it answers ``ps`` over 100,000
# workflows). Parsed, they take about ten times that.
KEPT_BYTES: Final = PUSHED_BYTES_PER_POLL
# The longest line read. flowd's largest answer is ``ps``, one summary per workflow: at
# 100,000 workflows 50 MB with the benchmark's records, 74 MiB with 700-byte records (a
# short real workflow's); 128 MiB holds 100,000 summaries of up to 1,300 bytes. Parsing
# such an answer takes flowctl ~400 MB; a peer that sends a longer line costs it ~150 MB.
MAX_LINE: Final = 128 << 20

Message = dict[str, Any]


class RpcFailure(DaemonError):
    """An error answer (``code``, ``message``, ``data`` as flowd sent them)."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_place(path: str) -> None:
    """Nothing at ``path``: DaemonUnavailable (no daemon, said only with --verbose). A
    socket in a directory that fails ``check_socket_dir``: DaemonUntrusted."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise DaemonUnavailable(path, _reason(exc)) from None
    except OSError:
        pass  # a directory this user cannot search: its check says why
    try:
        check_socket_dir(os.path.dirname(path) or ".", os.geteuid())
    except UnsafeSocketDir as exc:
        raise DaemonUntrusted(path, str(exc)) from None
    except OSError as exc:
        raise DaemonUnavailable(path, _reason(exc)) from None


def check_peer(path: str, sock: socket.socket) -> None:
    """DaemonUntrusted unless the server's uid is this user's or root's."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (os.geteuid(), 0):
        raise DaemonUntrusted(path, f"served by uid {uid}, not {os.geteuid()} (nor root)")


class Connection:
    """One connection to flowd; not thread-safe, one user at a time."""

    def __init__(self, path: str, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self._timeout = timeout  # for an answer, and for sending
        self._ids = itertools.count(1)
        self._lines: deque[bytes | bytearray] = deque()  # complete lines, not parsed yet
        self._partial = bytearray()  # the start of the next line
        self._pushed: deque[Message] = deque()
        self._line_size = 0  # of the last message parsed
        check_place(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            sock.settimeout(timeout)
            check_peer(path, sock)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(path, _reason(exc)) from None
        except DaemonUntrusted:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._socket().settimeout(seconds)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise DaemonUnavailable(self.path, "the connection is closed")
        return self._sock

    def _lost(self, detail: str) -> DaemonUnavailable:
        self.close()
        return DaemonUnavailable(self.path, detail)

    # -- bytes ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        data = json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._socket().sendall(data)
        except OSError as exc:
            raise self._lost(_reason(exc)) from None

    def _receive(self, timeout: float) -> int:
        """Read what arrives within ``timeout`` seconds (one read); the bytes read."""
        sock = self._socket()
        try:
            ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
            if not ready:
                return 0
            data = sock.recv(RECEIVE_BYTES)
        except OSError as exc:  # a timeout, a reset
            raise self._lost(_reason(exc)) from None
        if not data:
            raise self._lost("closed the connection")
        self._split(data)
        return len(data)

    def _split(self, data: bytes) -> None:
        """Complete lines to ``_lines``, the rest to ``_partial``; AnswerTooLong as soon
        as a line passes MAX_LINE (the bytes of the line held never do)."""
        first = data.find(b"\n")
        if first < 0:
            self._extend(data)
            return
        self._extend(data[:first])
        self._lines.append(self._partial)  # the line itself, not a copy of it
        cut = data.rfind(b"\n")
        if cut > first:
            self._lines.extend(data[first + 1 : cut].split(b"\n"))
        self._partial = bytearray()
        self._extend(data[cut + 1 :])

    def _extend(self, data: bytes) -> None:
        if len(self._partial) + len(data) > MAX_LINE:
            self.close()
            self._partial = bytearray()
            raise AnswerTooLong(self.path, MAX_LINE)
        self._partial += data

    def _parse(self, line: bytes | bytearray) -> Message | None:
        if not line or line.isspace():  # (strip would copy a line of up to MAX_LINE)
            return None
        self._line_size = len(line)
        try:
            message = json.loads(line)
        except ValueError:
            raise self._lost("sent a line that is not JSON") from None
        if not isinstance(message, dict):
            raise self._lost("sent a message that is not a JSON object")
        return message

    def _next(self, timeout: float) -> Message | None:
        """The next message, waiting up to ``timeout`` seconds for it; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            while self._lines:
                message = self._parse(self._lines.popleft())
                if message is not None:
                    return message
            left = deadline - time.monotonic()
            if left < 0 or not self._receive(left):
                return None

    # -- messages ---------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> Any:
        """The result of ``method``; RpcFailure on an error answer."""
        ident = next(self._ids)
        request: Message = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params:
            request["params"] = params
        self._send(request)
        deadline = time.monotonic() + self._timeout
        kept = 0  # bytes of the notifications kept meanwhile
        while True:
            message = self._next(deadline - time.monotonic())
            if message is None:
                raise self._lost(f"no answer to {method} within {self._timeout:g} s")
            if "method" in message:
                self._pushed.append(message)  # a notification, for ``pushed``
                kept += self._line_size
                if kept > KEPT_BYTES:
                    self.close()
                    raise AnswerTooLong(self.path, KEPT_BYTES, f"notifications before {method}")
            elif message.get("id") == ident:
                break
        error = message.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcFailure(method, 0, repr(error)[:200])
            code = error.get("code")
            raise RpcFailure(
                method,
                code if isinstance(code, int) else 0,
                str(error.get("message", "")),
                error.get("data"),
            )
        return message.get("result")

    def kept(self) -> list[Message]:
        """The notifications that arrived while ``call`` waited (before its answer)."""
        taken = list(self._pushed)
        self._pushed.clear()
        return taken

    def pushed(self, timeout: float) -> list[Message]:
        """Notifications: those kept so far and those already arrived; when there are
        none, waits up to ``timeout`` seconds for some."""
        budget = PUSHED_BYTES_PER_POLL
        if not self._pushed and not self._lines:
            budget -= self._receive(timeout)
        while budget > 0 and (read := self._receive(0)):
            budget -= read
        while self._lines:
            message = self._parse(self._lines.popleft())
            if message is not None and "method" in message:
                self._pushed.append(message)
        return self.kept()
