"""flowd's log and its ``ping``/``stats`` answers hold no secret from the collector's URL
and no raw control byte from what a collector answers: endpoints are shown as
``scheme://host:port/path``, a collector's words escaped and bounded, and every log line
goes through the core's one escaping function."""

from __future__ import annotations

import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from flowd.logs import EscapingFormatter
from flowd.otlp.endpoint import shown
from flowd.otlp.health import Failed, Rejected, answer, no_answer
from tests.support.flowd import Flowd
from tests.support.otlp import WAIT, Collector, exporting, run, stats, trace_dir
from tests.support.procs import wait_for

EVIL = "\x1b[2J\x1b]52;c;ZXZpbA==\x07\r\n\u202e\x9b31m\u2066"
SECRETS = ("secret", "SECRET", "frag")
CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def assert_clean(text: str) -> None:
    """No secret of the endpoint's URL, no control character but newline, no bidi."""
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {text!r}"
    found = sorted(set(CONTROLS.findall(text)))
    assert not found, f"raw controls {found!r} in {text!r}"


def strings(value: object) -> str:
    """Every string in a decoded JSON answer (its \\u escapes undone), a space between."""
    if isinstance(value, str):
        assert "\n" not in value, value
        return value
    if isinstance(value, dict):
        return " ".join(strings(item) for pair in value.items() for item in pair)
    if isinstance(value, list):
        return " ".join(strings(item) for item in value)
    return ""


def answers(daemon: Flowd) -> str:
    """``ping`` and ``stats`` as the client decodes them."""
    with daemon.client() as client:
        return strings([client.call("ping"), client.call("stats")])


def stopped_log(daemon: Flowd) -> str:
    """flowd stopped, its stderr as written (no newline translated: a CR stays a CR)."""
    daemon.stop()
    return daemon.log_path.read_bytes().decode("utf-8")


# -- a URL with credentials, a query and a fragment ---------------------------------------------


def test_a_url_with_credentials_and_a_key_is_neither_logged_nor_answered(tmp_path: Path) -> None:
    url = "http://user:secret@127.0.0.1:9/v1/traces?api_key=SECRET#frag"
    daemon = Flowd("--otlp-endpoint", url, state=tmp_path / "state")
    try:
        with daemon.client() as client:
            otlp = client.call("ping")["otlp"]
        assert otlp["state"] == "invalid" and otlp["endpoint"] == "http://127.0.0.1:9/v1/traces"
        assert "credentials" in otlp["last_error"]
        assert_clean(strings(otlp))
        log = stopped_log(daemon)
    finally:
        daemon.cleanup()
    assert "http://127.0.0.1:9/v1/traces" in log and "not exporting spans" in log
    assert_clean(log)


def test_a_query_sent_to_the_collector_is_not_logged(tmp_path: Path) -> None:
    collector = Collector()
    try:
        traces = trace_dir(tmp_path)
        url = collector.url + "/v1/traces?api_key=SECRET"
        with exporting(tmp_path, url) as daemon:
            run(traces, "wf-q")
            wait_for(lambda: collector.taken(), WAIT, "spans")
            assert collector.requests[0].path == "/v1/traces?api_key=SECRET"  # still sent
            assert stats(daemon)["endpoint"] == collector.url + "/v1/traces"
            assert_clean(answers(daemon))
            log = stopped_log(daemon)
        assert_clean(log)
        assert f"exporting spans to {collector.url}/v1/traces" in log
    finally:
        collector.close()


@pytest.mark.parametrize(
    ("url", "seen"),
    [
        ("http://user:secret@c:4318/v1/traces?api_key=SECRET#frag", "http://c:4318/v1/traces"),
        ("https://me:pa/ss@c/x?k=v", "https://c/x"),
        ("http://c:4318/v1/traces#frag", "http://c:4318/v1/traces"),
        ("http://c/\x1b[2J\x07", "http://c/\\x1b[2J\\x07"),
        ("http://c/" + "p" * 500, "http://c/" + "p" * 190 + "…"),
    ],
)
def test_a_url_is_shown_as_scheme_host_port_and_path(url: str, seen: str) -> None:
    assert shown(url) == seen


def test_an_exception_that_repeats_the_url_shows_it_as_logs_do() -> None:
    url = "http://127.0.0.1:9/v1/traces?api_key=SECRET"
    failed = no_answer(OSError(f"cannot reach {url} (api_key=SECRET)\x1b[2J"), url)
    assert failed.detail == "OSError: cannot reach http://127.0.0.1:9/v1/traces (***)\\x1b[2J"


# -- a collector that answers with control bytes -------------------------------------------------


PARTIAL = {"partialSuccess": {"rejectedSpans": "1", "errorMessage": EVIL * 3}}
ANSWERS = [
    (503, "Busy \x1b[2J\x07\x9b", EVIL.encode() * 5),
    (400, "Bad \x1b]52;c;eA==\x07", EVIL.encode() * 40),
    (200, "OK", b"{}"),
    (200, "OK", json.dumps(PARTIAL).encode()),
]


class HostileCollector(Collector):
    """Answers its POSTs in turn: 503 with a crafted reason phrase and body (the batch is
    kept and sent again), 400 with a crafted body (rejected), 200, then a 200 whose partial
    success carries a crafted message."""

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            self.arrived += 1
            turn = self.arrived
        status, reason, body = ANSWERS[min(turn, len(ANSWERS)) - 1]
        handler.send_response(status, reason)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def test_a_collectors_hostile_answers_reach_the_log_escaped(tmp_path: Path) -> None:
    collector = HostileCollector()
    try:
        traces = trace_dir(tmp_path)
        url = collector.url + "/v1/traces?api_key=SECRET"
        with exporting(tmp_path, url) as daemon:
            run(traces, "wf-a")
            wait_for(lambda: collector.arrived >= 2, WAIT, "the 503, then the 400")
            wait_for(lambda: stats(daemon)["rejected_spans"], WAIT, "the rejection counted")
            rejected = stats(daemon)
            assert "\\x1b[2J" in rejected["last_error"] and len(rejected["last_error"]) < 400
            assert_clean(strings(rejected))
            run(traces, "wf-b")
            wait_for(lambda: collector.arrived >= 3, WAIT, "the 200")
            run(traces, "wf-c")
            wait_for(lambda: collector.arrived >= 4, WAIT, "the partial success")
            wait_for(lambda: "partial success" in (stats(daemon)["last_error"] or ""), WAIT, "it")
            assert_clean(answers(daemon))
            log = stopped_log(daemon)
        assert "collector unavailable at" in log and "HTTP 503 Busy \\x1b[2J\\x07\\x9b" in log
        assert "HTTP 400 Bad \\x1b]52;c;eA==\\x07" in log and "partial success: " in log
        assert_clean(log)
        assert max(len(line) for line in log.splitlines() if " otlp: " in line) < 600
    finally:
        collector.close()


def test_a_collectors_words_are_escaped_and_bounded_in_outcomes() -> None:
    rejected = answer(400, "Bad\x1b[2J", EVIL.encode() * 100)
    failed = answer(503, "Busy\x07", EVIL.encode())
    assert isinstance(rejected, Rejected) and isinstance(failed, Failed)
    for text in (rejected.detail, failed.reason, failed.detail):
        assert "\n" not in text
        assert_clean(text)
    assert failed.reason == "HTTP 503 Busy\\x07" and len(rejected.detail) <= 230


def test_every_log_line_is_escaped_whoever_wrote_it() -> None:
    formatter = EscapingFormatter()
    record = logging.LogRecord("flowd", logging.INFO, __file__, 1, "root %s", (EVIL,), None)
    line = formatter.format(record)
    assert "\n" not in line and "\\x1b[2J" in line and "\\r\\n" in line
    assert_clean(line)
    try:
        raise ValueError(EVIL)
    except ValueError:
        record = logging.LogRecord("flowd", logging.ERROR, __file__, 1, "bug", (), sys.exc_info())
    text = formatter.format(record)
    assert "Traceback" in text and "ValueError: \\x1b[2J" in text
    assert_clean(text)
