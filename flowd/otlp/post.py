"""One OTLP/HTTP export request: spans encoded as OTLP/JSON, POSTed with the standard
library's HTTP client. Blocking: flowd calls ``post`` in a worker thread.

A request has ``timeout`` seconds in all, not per socket operation: a collector that
trickles its answer a byte at a time would otherwise hold the sender (and flowd's exit,
which waits for anyio's worker threads) for as long as it likes. The request is made in
a daemon thread of its own; at the deadline ``post`` gives up on it, a timeout whatever
it was waiting for, and shuts its connection down, which ends a blocked TLS handshake,
send or read at once.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Final

from doeff_flow_core.timeline.otlp import request_json
from doeff_flow_core.timeline.spans import Span
from flowd.otlp.endpoint import Endpoint
from flowd.otlp.health import Outcome, answer, no_answer

ANSWER_BYTES: Final = 64 * 1024  # read of a collector's answer, at most
USER_AGENT: Final = "doeff-flow-flowd"
LEAST_SECONDS: Final = 0.001  # a socket timeout of 0 would make it non-blocking


class _Deadline:
    """The sockets of one request, shut down by ``expire`` when its time is up."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._closed = False

    def remaining(self) -> float:
        return max(self._end - time.monotonic(), LEAST_SECONDS)

    def watch(self, sock: socket.socket) -> None:
        # A descriptor of our own for the same connection: shutting it down ends the
        # connection whoever holds it by then (TLS takes the socket over), and it is
        # never closed under ``expire``'s feet (``close`` closes it, under the lock).
        own = sock.dup()
        with self._lock:
            if self._closed:
                own.close()
                return
            self._sockets.append(own)
            if self._expired:
                _shut(own)

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (any more): nothing to interrupt


class _Watched(http.client.HTTPConnection):
    """A connection whose socket its request's deadline watches. Below HTTPSConnection in
    ``_Secure``'s MRO, so the socket is watched before the TLS handshake starts."""

    deadline: _Deadline

    def connect(self) -> None:
        self.timeout = self.deadline.remaining()  # for the connect, and each operation after
        super().connect()
        self.deadline.watch(self.sock)


class _Secure(http.client.HTTPSConnection, _Watched):
    pass


class _OnDeadline(urllib.request.AbstractHTTPHandler):
    """Makes urllib's connections ``connection`` ones, watched by ``deadline``."""

    connection: type[_Watched]

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(
        self, http_class: Any, req: urllib.request.Request, **http_conn_args: Any
    ) -> http.client.HTTPResponse:
        def watched(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
            connection = self.connection(host, **kwargs)
            connection.deadline = self.deadline
            return connection

        return super().do_open(watched, req, **http_conn_args)


class _HttpHandler(_OnDeadline, urllib.request.HTTPHandler):
    connection = _Watched


class _HttpsHandler(_OnDeadline, urllib.request.HTTPSHandler):
    connection = _Secure


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is for a POST: the batch is not resent
    elsewhere (urllib would turn it into a GET without the body)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def request_body(spans: Sequence[Span]) -> bytes:
    return request_json(spans).encode("utf-8")


def post(endpoint: Endpoint, spans: Sequence[Span], timeout: float) -> Outcome:
    """Send ``spans`` in one export request, within ``timeout`` seconds; what came of it."""
    headers = {"User-Agent": USER_AGENT, **dict(endpoint.headers)}
    headers["Content-Type"] = "application/json"  # urllib folds the names' case together
    request = urllib.request.Request(
        endpoint.url, data=request_body(spans), headers=headers, method="POST"
    )
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        _NoRedirects, _HttpHandler(deadline), _HttpsHandler(deadline)
    )
    came: list[Outcome | Exception] = []

    def attempt() -> None:
        try:
            came.append(_exchange(opener, request, timeout))
        except Exception as exc:  # a bug: raised where post was called
            came.append(exc)
        finally:
            deadline.close()

    # A daemon thread: one still under way at the deadline (in a name lookup, which
    # nothing cuts short) ends on its own, and never holds flowd's exit.
    worker = threading.Thread(target=attempt, name="otlp-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if not came:
        deadline.expire()  # its connection shut down: it ends as soon as it can
        return no_answer(TimeoutError(f"no complete answer within {timeout:g} s"), endpoint.url)
    if isinstance(came[0], Exception):
        raise came[0]
    return came[0]


def _exchange(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> Outcome:
    try:
        with opener.open(request, timeout=timeout) as response:
            return answer(response.status, response.reason, response.read(ANSWER_BYTES))
    except urllib.error.HTTPError as error:
        with error:
            return answer(error.code, str(error.reason or ""), _body_of(error))
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        return no_answer(error, request.full_url)


def _body_of(error: urllib.error.HTTPError) -> bytes:
    """What came with an error status; it only helps to say why, so a failure to read it
    is no failure."""
    try:
        return error.read(ANSWER_BYTES) if error.fp is not None else b""
    except (OSError, http.client.HTTPException):
        return b""
