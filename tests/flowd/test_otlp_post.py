"""One export request, without a daemon: it ends at its deadline however slowly the
answer trickles."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flowd.otlp.endpoint import Endpoint
from flowd.otlp.health import Failed
from flowd.otlp.post import post
from tests.support.otlp import WAIT, run, trace_dir


@contextmanager
def trickling(answer: bytes, every: float) -> Iterator[str]:
    """A receiver on 127.0.0.1 that reads one request, then sends ``answer`` one byte every
    ``every`` seconds (until the client goes); its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += connection.recv(65536)
            try:
                for byte in answer:
                    connection.sendall(bytes([byte]))
                    time.sleep(every)
            except OSError:
                pass  # the client gave up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
    finally:
        thread.join(WAIT)
        listener.close()


def test_a_request_ends_at_its_deadline_however_slowly_the_answer_trickles(
    tmp_path: Path,
) -> None:
    traces = trace_dir(tmp_path)
    spans = run(traces, "wf-trickle")
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    with trickling(answer, 0.5) as url:  # the whole answer would take 40 s
        start = time.monotonic()
        outcome = post(Endpoint(url), spans, 1.0)
        took = time.monotonic() - start
    assert isinstance(outcome, Failed) and outcome.reason == "TimeoutError"
    assert outcome.detail == "TimeoutError: no complete answer within 1 s"
    assert 0.9 < took < 3.0
