"""The wire format, with no I/O: newline-delimited JSON-RPC 2.0, one message per line.

Bytes go in (``LineSplitter.feed``, ``parse_request``), bytes come out (``encode``,
``result_message``, ``error_message``, ``Notifier``). Records are carried as the exact
bytes of their trace line (``RawJson``), spliced into the output without re-encoding,
so a record sent by flowd is the record as stored.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from doeff_flow_core.protocol import MAX_REQUEST_BYTES, TRACE_NOTIFICATION
from doeff_flow_core.records import loads
from flowd.errors import InvalidRequest, ParseError, RpcError

VERSION: Final = "2.0"

RequestId = str | int | float | None


class LineSplitter:
    """Complete lines from a byte stream, each at most ``limit`` bytes.

    Once a line passes the limit, ``too_long`` is set and nothing more is returned: the
    lines before it are still given, the rest of the stream is not worth reading.
    """

    def __init__(self, limit: int = MAX_REQUEST_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self.too_long = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.too_long:
            return []
        search = len(self._buffer)
        self._buffer += data
        lines: list[bytes] = []
        begin = 0
        while (cut := self._buffer.find(b"\n", search)) >= 0:
            if cut - begin > self._limit:
                break
            lines.append(bytes(self._buffer[begin:cut]))
            begin = search = cut + 1
        del self._buffer[:begin]
        if len(self._buffer) > self._limit and self._buffer.find(b"\n", 0, self._limit + 1) < 0:
            self.too_long = True
            self._buffer = bytearray()
        return lines


@dataclass(frozen=True)
class RpcRequest:
    method: str
    params: dict[str, Any] | list[Any]
    id: RequestId = None
    notification: bool = False  # no "id" member: no response is sent


def request_id(message: object) -> RequestId:
    """The id of a message, when it has a valid one (for error responses), else None."""
    if isinstance(message, dict):
        value = message.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value):  # 1e999 parses as infinity
            return value
    return None


def parse_request(line: bytes) -> RpcRequest:
    """One request line as an RpcRequest, or ParseError / InvalidRequest."""
    try:
        message = loads(line)
    except (ValueError, RecursionError) as exc:
        raise ParseError(str(exc)[:200] or type(exc).__name__) from None
    if isinstance(message, list):
        raise InvalidRequest("batches are not supported")
    if not isinstance(message, dict):
        raise InvalidRequest(f"expected a JSON object, got {type(message).__name__}")
    ident = request_id(message)
    if message.get("jsonrpc") != VERSION:
        raise InvalidRequest('"jsonrpc" must be "2.0"', ident)
    method = message.get("method")
    if not isinstance(method, str):
        raise InvalidRequest('"method" must be a string', ident)
    params = message.get("params", {})
    if not isinstance(params, dict | list):
        raise InvalidRequest('"params" must be an object or an array', ident)
    notification = "id" not in message
    if not notification and ident is None and message["id"] is not None:
        raise InvalidRequest('"id" must be a string, a number or null')
    return RpcRequest(method, params, ident, notification)


class RawJson:
    """JSON text to be placed in a message as it is (a trace line, already validated)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawJson({self.text[:40]!r}...)"


# Placeholders for RawJson values while the standard encoder runs; the nonce keeps any
# string a client sends (a request id) from ever looking like one.
_NONCE: Final = secrets.token_hex(8)
_PLACEHOLDER: Final = re.compile(rb'"\\u0000' + _NONCE.encode() + rb":(\d+)\\u0000\"")


def encode(value: object) -> bytes:
    """``value`` as one line of JSON (ASCII, newline included), RawJson spliced in."""
    raws: list[bytes] = []

    def placeholder(item: object) -> str:
        if isinstance(item, RawJson):
            raws.append(item.text)
            return f"\x00{_NONCE}:{len(raws) - 1}\x00"
        raise TypeError(f"{type(item).__name__} is not JSON serializable")

    text = json.dumps(value, separators=(",", ":"), default=placeholder, allow_nan=False)
    data = text.encode("ascii")
    if not raws:
        return data + b"\n"
    parts = _PLACEHOLDER.split(data)
    for i in range(1, len(parts), 2):
        parts[i] = raws[int(parts[i])]
    parts.append(b"\n")
    return b"".join(parts)


def result_message(ident: RequestId, result: object) -> bytes:
    return encode({"jsonrpc": VERSION, "id": ident, "result": result})


def error_message(ident: RequestId, error: RpcError) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return encode({"jsonrpc": VERSION, "id": ident, "error": body})


def _string(text: str) -> bytes:
    return encode_basestring_ascii(text).encode("ascii")


def trace_body(workflow_id: str, root: str, record: bytes) -> bytes:
    """The part of a ``trace`` notification shared by every subscription it goes to."""
    return (
        b'"workflow_id":'
        + _string(workflow_id)
        + b',"root":'
        + _string(root)
        + b',"record":'
        + record
        + b"}}\n"
    )


def trace_prefix(subscription: str) -> bytes:
    """The start of a ``trace`` notification for one subscription; ``trace_body`` follows."""
    return (
        b'{"jsonrpc":"2.0","method":'
        + _string(TRACE_NOTIFICATION)
        + b',"params":{"subscription":'
        + _string(subscription)
        + b","
    )
