"""OTLP/JSON checked against the official schema (``opentelemetry-proto``).

OTLP/JSON differs from the plain protobuf JSON mapping in one way: trace and span ids
are hex, not base64. ``parse_request`` turns them into what ``json_format`` expects, so
a wrong length or a non-hex id fails here just as it would in a collector.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ID_BYTES = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _ID_BYTES and isinstance(value, str):
            raw = bytes.fromhex(value)  # ValueError when not hex
            if len(raw) != _ID_BYTES[key]:
                raise ValueError(f"{key} {value!r} is {len(raw)} bytes, not {_ID_BYTES[key]}")
            out[key] = base64.b64encode(raw).decode()
        else:
            out[key] = _hex_ids_to_base64(value)
    return out


def parse_request(payload: str | bytes | dict[str, Any]) -> ExportTraceServiceRequest:
    """An OTLP/JSON export request as the protobuf message; raises on anything invalid."""
    data = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
    message = ExportTraceServiceRequest()
    json_format.ParseDict(_hex_ids_to_base64(data), message)  # unknown fields raise
    return message


def spans_of(message: ExportTraceServiceRequest) -> list[Any]:
    return [
        span
        for resource_spans in message.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
