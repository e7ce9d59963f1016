"""Spans as OpenTelemetry: OTLP/JSON ``ExportTraceServiceRequest`` text.

Pure and standard library only, shared by ``flowctl export --format otlp`` and flowd's
exporter so that both give the same ids for the same spans: a run's trace id and its
spans' ids are hashes of the workflow id, the run and the span's number in the run.
Field names and encodings follow the OTLP/JSON mapping of the protobuf messages
(lowerCamelCase names, 64-bit integers as decimal strings, ids as hex).

The JSON is put together from strings, as the tracer's records are: flowd encodes every
span it exports, each with up to a hundred events, and building dicts for ``json.dumps``
cost several times more.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any, Final, TextIO

from doeff_flow_core.timeline.spans import CANCELLED, EFFECT, ERROR, INCOMPLETE, OK, WORKFLOW, Span

SERVICE_NAME: Final = "doeff-flow"
SCOPE_NAME: Final = "doeff_flow_core"
SPAN_KIND_INTERNAL: Final = 1
STATUS_UNSET: Final = 0
STATUS_OK: Final = 1
STATUS_ERROR: Final = 2
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SCOPE: Final = f'{{"name":"{SCOPE_NAME}"}}'
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_UINT32_MAX: Final = 2**32 - 1

Attribute = str | int | bool | None


def trace_id(workflow_id: str, run: str) -> str:
    """The run's 16-byte trace id as 32 hex digits."""
    return hashlib.blake2b(_bytes(f"{workflow_id}\0{run}"), digest_size=16).hexdigest()


def span_id(workflow_id: str, run: str, number: int) -> str:
    """The 8-byte id of span ``number`` of a run, as 16 hex digits."""
    return hashlib.blake2b(_bytes(f"{workflow_id}\0{run}\0{number}"), digest_size=8).hexdigest()


def _bytes(text: str) -> bytes:
    # surrogatepass: a run id read from a hostile trace may hold a lone surrogate
    return text.encode("utf-8", "surrogatepass")


def _text(value: str) -> str:
    """``value`` as a JSON string protobuf accepts (valid UTF-8): a lone surrogate, as in
    a file name decoded with surrogateescape, becomes U+FFFD instead of failing the
    request."""
    if not value.isascii():
        value = _LONE_SURROGATE.sub("\ufffd", value)
    return str(encode_basestring(value))


def _value(value: str | int | bool) -> str:
    if value is True or value is False:
        return f'{{"boolValue":{"true" if value else "false"}}}'
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return f'{{"intValue":"{value}"}}'
        return f'{{"stringValue":"{value}"}}'  # a hostile trace's number: kept, as text
    return f'{{"stringValue":{_text(value)}}}'


def _attributes(pairs: Iterable[tuple[str, Attribute]]) -> str:
    """An OTLP key-value list; None values are left out."""
    return ",".join(
        f'{{"key":{_text(key)},"value":{_value(value)}}}'
        for key, value in pairs
        if value is not None
    )


def _nanos(seconds: float) -> str:
    """A time as the fixed64 OTLP wants: clamped to what it can hold (1970 to 2554)."""
    return str(min(max(round(seconds * 1_000_000_000), 0), _UINT64_MAX))


def _resource(host: str | None, pid: int | None) -> str:
    pairs = (("service.name", SERVICE_NAME), ("host.name", host), ("process.pid", pid))
    return f'{{"attributes":[{_attributes(pairs)}]}}'


def _step(step: int | None) -> str:
    return "" if step is None else f'{{"key":"doeff.step","value":{_value(step)}}}'


def _events(item: Span) -> str:
    parts: list[str] = []
    append = parts.append
    for name, time, kind, step, pairs in item.events:  # unpacked: cheaper than by name
        if kind == EFFECT and step is not None and name.isascii():  # the common case
            nanos = round(time * 1_000_000_000)
            if 0 <= nanos <= _UINT64_MAX and 0 <= step <= _INT64_MAX:
                append(
                    f'{{"timeUnixNano":"{nanos}","name":{encode_basestring(name)},'
                    f'"attributes":[{{"key":"doeff.step","value":{{"intValue":"{step}"}}}}]}}'
                )
                continue
        attributes = _attributes(pairs.items())
        if step is not None:
            attributes = f"{attributes},{_step(step)}" if attributes else _step(step)
        append(
            f'{{"timeUnixNano":"{_nanos(time)}","name":{_text(name)},"attributes":[{attributes}]}}'
        )
    return ",".join(parts)


def _run_attributes(workflow_id: str, run: str) -> str:
    return _attributes((("doeff.workflow_id", workflow_id), ("doeff.run", run or None)))


def _code_attributes(function: str | None, file: str | None, line: int | None) -> str:
    pairs = (("code.function", function), ("code.filepath", file), ("code.lineno", line))
    return _attributes(pairs)


_Texts = tuple[
    Callable[[str, str], str],  # trace_id
    Callable[[str, str, int], str],  # span_id
    Callable[[str, str], str],  # _run_attributes
    Callable[[str | None, str | None, int | None], str],  # _code_attributes
]
# Every span of a run asks for the same trace id and run attributes, every call for its
# caller's id, every call from one place for the same code attributes: kept for spans
# whose texts are short (any real one); a hostile trace's huge names are worked out anew.
MAX_CACHED_TEXT: Final = 1024
_CACHED: Final[_Texts] = (
    lru_cache(maxsize=256)(trace_id),
    lru_cache(maxsize=4096)(span_id),
    lru_cache(maxsize=256)(_run_attributes),
    lru_cache(maxsize=4096)(_code_attributes),
)
_UNCACHED: Final[_Texts] = (trace_id, span_id, _run_attributes, _code_attributes)


def _pair(key: str, value: str | int | bool) -> str:
    """An attribute whose key is one of ours (plain ASCII: nothing to escape)."""
    return f'{{"key":"{key}","value":{_value(value)}}}'


def _span_attributes(item: Span, texts: _Texts, ending: str | None = None) -> str:
    _, _, run_attributes, code_attributes = texts
    parts = [run_attributes(item.workflow_id, item.run)]
    if item.task is not None:
        parts.append(_pair("doeff.task", item.task))
    code = code_attributes(item.name if item.kind != WORKFLOW else None, item.file, item.line)
    if code:
        parts.append(code)
    if item.args is not None:
        parts.append(_pair("doeff.args", item.args))
    parts.append(_pair("doeff.first_step", item.first_step))
    parts.append(_pair("doeff.last_step", item.last_step))
    if item.result is not None:
        parts.append(_pair("doeff.result", item.result))
    if item.status == INCOMPLETE:
        parts.append(_pair("doeff.incomplete", True))
        ending = ending or item.ending
        if ending is not None:
            parts.append(_pair("doeff.ending", ending))
    elif item.status == CANCELLED:
        parts.append(_pair("doeff.cancelled", True))
    return ",".join(parts)


def span_json(item: Span, ending: str | None = None) -> str:
    """One span as an OTLP/JSON ``Span`` object; ``ending``: for an incomplete run's
    workflow span, how the run stands (``lost``, ``unknown``, ``still running``)."""
    texts_length = len(item.workflow_id) + len(item.run) + len(item.name) + len(item.file or "")
    short = texts_length <= MAX_CACHED_TEXT
    texts = _CACHED if short else _UNCACHED
    trace_of, id_of = texts[0], texts[1]
    trace = trace_of(item.workflow_id, item.run)
    if item.status == OK:
        status = f'{{"code":{STATUS_OK}}}'
    elif item.status == ERROR:
        status = f'{{"code":{STATUS_ERROR},"message":{_text(item.error or "")}}}'
    else:
        status = f'{{"code":{STATUS_UNSET}}}'
    attributes = _span_attributes(item, texts, ending)
    parts = [f'{{"traceId":"{trace}","spanId":"{id_of(item.workflow_id, item.run, item.span_id)}",']
    if item.parent_id is not None:
        parts.append(f'"parentSpanId":"{id_of(item.workflow_id, item.run, item.parent_id)}",')
    parts.append(
        f'"name":{_text(item.name)},"kind":{SPAN_KIND_INTERNAL},'
        f'"startTimeUnixNano":"{_nanos(item.start)}","endTimeUnixNano":"{_nanos(item.end)}",'
        f'"attributes":[{attributes}],"events":[{_events(item)}],'
    )
    if item.dropped_events:
        parts.append(f'"droppedEventsCount":{min(item.dropped_events, _UINT32_MAX)},')
    if item.spawned_by is not None:
        spawner = id_of(item.workflow_id, item.run, item.spawned_by)
        parts.append(
            f'"links":[{{"traceId":"{trace}","spanId":"{spawner}",'
            f'"attributes":[{_attributes((("doeff.link", "spawned_by"),))}]}}],'
        )
    parts.append(f'"status":{status}}}')
    return "".join(parts)


def write_export_request(
    spans: Iterable[Span], out: TextIO, ending: Callable[[str], str] | None = None
) -> int:
    """Write one ``ExportTraceServiceRequest`` holding ``spans`` to ``out``, span by span,
    in memory bounded by one span; returns how many spans were written. Consecutive
    spans of one process share a resource (a run's spans are consecutive). ``ending``:
    for a run with no terminal record, how it stands (given the run), said on its
    workflow span as ``doeff.ending``."""
    count = 0
    key: tuple[str | None, int | None] | None = None
    out.write('{"resourceSpans":[')
    for item in spans:
        here = (item.host, item.pid)
        if here != key:
            if key is not None:
                out.write("]}]},")
            key = here
            out.write(f'{{"resource":{_resource(*here)},"scopeSpans":[{{"scope":{_SCOPE},"spans":[')
        else:
            out.write(",")
        said = (
            ending(item.run)
            if ending is not None and item.kind == WORKFLOW and item.status == INCOMPLETE
            else None
        )
        out.write(span_json(item, said))
        count += 1
    if key is not None:
        out.write("]}]}")
    out.write("]}\n")
    return count


def request_json(spans: Iterable[Span]) -> str:
    """``write_export_request`` as one string (a batch that fits in memory)."""
    buffer = io.StringIO()
    write_export_request(spans, buffer)
    return buffer.getvalue()


def export_request(spans: Iterable[Span]) -> dict[str, Any]:
    """``request_json`` as parsed JSON."""
    data: dict[str, Any] = json.loads(request_json(spans))
    return data
