"""How exporting goes: outcomes of requests, counters, one log line per change."""

from __future__ import annotations

from flowd.otlp.health import Failed, Health, Rejected, Sent, answer


def test_health_logs_once_per_change_of_the_collectors_condition() -> None:
    health = Health("http://c/v1/traces")
    refused = Failed("ConnectionRefusedError", "ConnectionRefusedError: refused")
    notes = [
        health.record(refused, 5),
        health.record(refused, 5),
        health.drop(3, "10 spans"),
        health.drop(2, "10 spans"),
        health.record(Sent(), 5),
        health.record(Sent(), 5),
        health.record(answer(400, "Bad Request", b"no"), 4),
        health.record(answer(400, "Bad Request", b"no"), 4),
        health.record(answer(200, "OK", b'{"partialSuccess":{"rejectedSpans":"2"}}'), 6),
        health.record(Sent(), 1),
    ]
    said = [note.message if note else None for note in notes]
    assert said == [
        "otlp: collector unreachable at http://c/v1/traces: ConnectionRefusedError; "
        "keeping spans and retrying",
        None,
        "otlp: queue full (10 spans); dropping the oldest spans",
        None,
        "otlp: collector reachable again at http://c/v1/traces, 5 spans sent; "
        "5 dropped meanwhile (queue full)",
        None,
        "otlp: collector at http://c/v1/traces rejected 4 spans: HTTP 400 Bad Request: no; "
        "rejected spans are dropped",
        None,
        None,
        "otlp: collector at http://c/v1/traces accepts spans again",
    ]
    assert health.snapshot(7) == {
        "endpoint": "http://c/v1/traces",
        "state": "ok",
        "queued": 7,
        "sent_spans": 5 + 5 + 4 + 1,
        "dropped_spans": 5,
        "rejected_spans": 4 + 4 + 2,
        "failed_requests": 2,
        "last_error": "partial success",
    }
    for status in (429, 502, 503, 504):  # "try again later", says OTLP/HTTP
        assert isinstance(answer(status, "", b""), Failed)
    for status in (301, 400, 404, 413, 500, 501, 505):  # final: sending again is no use
        assert isinstance(answer(status, "", b""), Rejected)
