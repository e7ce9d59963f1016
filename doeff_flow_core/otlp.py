"""Spans as OpenTelemetry: OTLP/JSON ``ExportTraceServiceRequest`` objects.

Pure and standard library only, shared by ``flowctl export --format otlp`` and flowd's
exporter so that both give the same ids for the same spans: a run's trace id and its
spans' ids are hashes of the workflow id, the run and the span's number in the run.
Field names and encodings follow the OTLP/JSON mapping of the protobuf messages
(lowerCamelCase names, 64-bit integers as decimal strings, ids as hex).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final, TextIO

from doeff_flow_core.spans import ERROR, INCOMPLETE, OK, WORKFLOW, Span, SpanEvent

SERVICE_NAME: Final = "doeff-flow"
SCOPE_NAME: Final = "doeff_flow_core"
SPAN_KIND_INTERNAL: Final = 1
STATUS_UNSET: Final = 0
STATUS_OK: Final = 1
STATUS_ERROR: Final = 2
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def trace_id(workflow_id: str, run: str) -> str:
    """The run's 16-byte trace id as 32 hex digits."""
    return hashlib.blake2b(f"{workflow_id}\0{run}".encode(), digest_size=16).hexdigest()


def span_id(workflow_id: str, run: str, number: int) -> str:
    """The 8-byte id of span ``number`` of a run, as 16 hex digits."""
    return hashlib.blake2b(f"{workflow_id}\0{run}\0{number}".encode(), digest_size=8).hexdigest()


def _text(value: str) -> str:
    """``value`` as text protobuf accepts (valid UTF-8): a lone surrogate, as in a file
    name decoded with surrogateescape, becomes U+FFFD instead of failing the request."""
    return _LONE_SURROGATE.sub("\ufffd", value)


def _value(value: str | int | bool) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": _text(value)}


def attributes(pairs: Iterable[tuple[str, str | int | bool | None]]) -> list[dict[str, Any]]:
    """OTLP key-value list; None values are left out."""
    return [
        {"key": _text(key), "value": _value(value)} for key, value in pairs if value is not None
    ]


def _nanos(seconds: float) -> str:
    return str(round(seconds * 1_000_000_000))


def resource(host: str | None, pid: int | None) -> dict[str, Any]:
    return {
        "attributes": attributes(
            [("service.name", SERVICE_NAME), ("host.name", host), ("process.pid", pid)]
        )
    }


def _event(event: SpanEvent) -> dict[str, Any]:
    return {
        "timeUnixNano": _nanos(event.time),
        "name": _text(event.name),
        "attributes": attributes(event.attributes.items()),
    }


def span(item: Span) -> dict[str, Any]:
    """One span as an OTLP/JSON ``Span``."""
    status: dict[str, Any] = {"code": STATUS_UNSET}
    if item.status == OK:
        status = {"code": STATUS_OK}
    elif item.status == ERROR:
        status = {"code": STATUS_ERROR, "message": _text(item.error or "")}
    data: dict[str, Any] = {
        "traceId": trace_id(item.workflow_id, item.run),
        "spanId": span_id(item.workflow_id, item.run, item.span_id),
        "name": _text(item.name),
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": _nanos(item.start),
        "endTimeUnixNano": _nanos(item.end),
        "attributes": attributes(
            [
                ("doeff.workflow_id", item.workflow_id),
                ("doeff.run", item.run or None),
                ("doeff.task", item.task),
                ("code.function", item.name if item.kind != WORKFLOW else None),
                ("code.filepath", item.file),
                ("code.lineno", item.line),
                ("doeff.first_step", item.first_step),
                ("doeff.last_step", item.last_step),
                ("doeff.result", item.result),
                ("doeff.incomplete", True if item.status == INCOMPLETE else None),
            ]
        ),
        "events": [_event(event) for event in item.events],
        "status": status,
    }
    if item.parent_id is not None:
        data["parentSpanId"] = span_id(item.workflow_id, item.run, item.parent_id)
    if item.dropped_events:
        data["droppedEventsCount"] = item.dropped_events
    if item.spawned_by is not None:
        data["links"] = [
            {
                "traceId": data["traceId"],
                "spanId": span_id(item.workflow_id, item.run, item.spawned_by),
                "attributes": attributes([("doeff.link", "spawned_by")]),
            }
        ]
    return data


def _scope() -> dict[str, Any]:
    return {"name": SCOPE_NAME}


def _by_resource(
    spans: Iterable[Span],
) -> Iterator[tuple[tuple[str | None, int | None], list[Span]]]:
    """Consecutive spans of one process together (a run's spans are consecutive)."""
    key: tuple[str | None, int | None] | None = None
    group: list[Span] = []
    for item in spans:
        here = (item.host, item.pid)
        if here != key and group:
            assert key is not None
            yield key, group
            group = []
        key = here
        group.append(item)
    if group:
        assert key is not None
        yield key, group


def export_request(spans: Iterable[Span]) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` holding ``spans`` (for batches that fit in memory)."""
    return {
        "resourceSpans": [
            {
                "resource": resource(host, pid),
                "scopeSpans": [{"scope": _scope(), "spans": [span(item) for item in group]}],
            }
            for (host, pid), group in _by_resource(spans)
        ]
    }


def write_export_request(spans: Iterable[Span], out: TextIO) -> int:
    """Stream one ``ExportTraceServiceRequest`` holding ``spans`` to ``out``, span by span,
    in memory bounded by one span; returns how many spans were written."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    count = 0
    key: tuple[str | None, int | None] | None = None
    out.write('{"resourceSpans":[')
    for item in spans:
        here = (item.host, item.pid)
        if here != key:
            if key is not None:
                out.write("]}]},")
            key = here
            out.write(
                f'{{"resource":{dumps(resource(*here))},'
                f'"scopeSpans":[{{"scope":{dumps(_scope())},"spans":['
            )
        elif count:
            out.write(",")
        out.write(dumps(span(item)))
        count += 1
    if key is not None:
        out.write("]}]}")
    out.write("]}\n")
    return count
