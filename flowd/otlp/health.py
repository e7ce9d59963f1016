"""How exporting to the collector goes: each request's outcome, counters, log lines.

Pure. ``answer`` and ``no_answer`` turn what an HTTP request gave into an ``Outcome``,
whose text (the collector's words, an exception's message) is escaped and bounded here:
it goes to the log and to ``ping``/``stats`` answers;
``Health`` keeps the counters that ``ping`` and ``stats`` report and decides what to
log: one line when the collector's condition changes (reachable, failing, rejecting,
the queue overflowing), never one per request or retry.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

from doeff_flow_core.escape import safe_clip
from flowd.otlp.endpoint import shown

IDLE: Final = "idle"  # nothing sent yet
OK: Final = "ok"  # the collector answered the last request (rejections included)
RETRYING: Final = "retrying"  # the last request failed: the batch is kept and retried
INVALID: Final = "invalid"  # the settings are wrong: nothing is exported
_REJECTING: Final = "rejecting"  # a condition logged, reported as OK

FIRST_BACKOFF: Final = 0.5
MOST_BACKOFF: Final = 30.0
DETAIL_CHARS: Final = 200  # of a collector's answer, in last_error and the log
REASON_CHARS: Final = 80  # of an HTTP reason phrase or an exception's name
# OTLP/HTTP: only these say "try again later"; any other error status is final (a 500
# answered to one batch would be answered to it forever, and hold up every batch behind)
RETRYABLE: Final = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Sent:
    """The collector took the batch; ``rejected`` of its spans it refused (a partial
    success), saying why in ``detail``."""

    rejected: int = 0
    detail: str | None = None


@dataclass(frozen=True)
class Rejected:
    """The collector refused the batch (a status not in RETRYABLE): sending it again is
    no use."""

    detail: str


@dataclass(frozen=True)
class Failed:
    """No usable answer (no connection, a timeout, a status in RETRYABLE): the batch is
    tried again."""

    reason: str  # short, for the log: "ConnectionRefusedError", "HTTP 503 Service Unavailable"
    detail: str  # for last_error
    answered: bool = False  # an HTTP status came back (the collector is there, but failing)


Outcome = Sent | Rejected | Failed


@dataclass(frozen=True)
class Notice:
    """A line for flowd's log."""

    level: int
    message: str


def answer(status: int, reason: str, body: bytes) -> Outcome:
    """What an HTTP status (and the body that came with it) means for a batch."""
    head = f"HTTP {status} {safe_clip(reason, REASON_CHARS)}".rstrip()
    text = safe_clip(body.decode("utf-8", "replace").strip(), DETAIL_CHARS)
    detail = f"{head}: {text}" if text else head
    if 200 <= status < 300:
        return _partial_success(body)
    if status in RETRYABLE:
        return Failed(head, detail, answered=True)
    return Rejected(detail)


def _partial_success(body: bytes) -> Sent:
    """OTLP/HTTP: a 200 may still refuse some spans (``partialSuccess.rejectedSpans``)."""
    try:
        data = json.loads(body) if body.strip() else {}
        partial = data.get("partialSuccess") or {}
        rejected = int(partial.get("rejectedSpans") or 0)  # int64: a string in OTLP/JSON
        message = safe_clip(str(partial.get("errorMessage") or ""), DETAIL_CHARS)
    except (ValueError, TypeError, AttributeError):
        return Sent()  # an answer that is not OTLP/JSON: the spans were taken
    if rejected <= 0:
        return Sent()
    return Sent(rejected, f"partial success: {message}" if message else "partial success")


def no_answer(error: BaseException, url: str = "") -> Failed:
    """A request to ``url`` that got no HTTP answer (``URLError`` wraps the socket's
    error). Where the error's message repeats the URL, it shows it as logs do."""
    cause: object = error.reason if isinstance(error, urllib.error.URLError) else error
    text = _without_url(str(cause), url)
    if isinstance(cause, BaseException):
        name = type(cause).__name__
        return Failed(name, f"{name}: {text}" if text else name)
    return Failed(text, text)


def _without_url(text: str, url: str) -> str:
    """``text`` escaped and bounded, with ``url``, its query and its fragment (where an
    API key may be) replaced by the URL as it is shown."""
    if url:
        text = text.replace(url, shown(url))
        parts = urllib.parse.urlsplit(url)
        for secret in (parts.query, parts.fragment, parts.netloc.rpartition("@")[0]):
            if secret:
                text = text.replace(secret, "***")
    return safe_clip(text, DETAIL_CHARS)


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 0.5, 1, 2 ... 30."""
    return min(FIRST_BACKOFF * 2.0 ** max(failures - 1, 0), MOST_BACKOFF)


class Health:
    def __init__(self, endpoint: str | None, invalid: str | None = None) -> None:
        self.endpoint = endpoint
        self.state = INVALID if invalid is not None else IDLE
        self.last_error = invalid
        self.sent_spans = 0
        self.dropped_spans = 0
        self.rejected_spans = 0
        self.failed_requests = 0
        self._condition = self.state
        self._dropped_before = 0  # dropped_spans when the collector began to fail
        self._overflowing = False

    def record(self, outcome: Outcome, spans: int) -> Notice | None:
        """Count one request's outcome for a batch of ``spans``; a line to log when the
        collector's condition changed."""
        where = self.endpoint
        before = self._condition
        if isinstance(outcome, Failed):
            self.failed_requests += 1
            self.last_error = outcome.detail
            self.state = self._condition = RETRYING
            if before == RETRYING:
                return None
            self._dropped_before = self.dropped_spans
            what = "unavailable" if outcome.answered else "unreachable"
            return Notice(
                logging.WARNING,
                f"otlp: collector {what} at {where}: {outcome.reason}; keeping spans and retrying",
            )
        self.state = OK
        if isinstance(outcome, Rejected):
            refused, detail = spans, outcome.detail
        else:
            refused, detail = min(outcome.rejected, spans), outcome.detail or "partial success"
        self.sent_spans += spans - refused
        if refused:
            self.rejected_spans += refused
            self.last_error = detail
            self._condition = _REJECTING
            if before == _REJECTING:
                return None
            return Notice(
                logging.WARNING,
                f"otlp: collector at {where} rejected {refused} spans: {detail}; "
                "rejected spans are dropped",
            )
        self._condition = OK
        if before == RETRYING:
            lost = self.dropped_spans - self._dropped_before
            meanwhile = f"; {lost} dropped meanwhile (queue full)" if lost else ""
            return Notice(
                logging.INFO,
                f"otlp: collector reachable again at {where}, {spans} spans sent{meanwhile}",
            )
        if before == _REJECTING:
            return Notice(logging.INFO, f"otlp: collector at {where} accepts spans again")
        if before == IDLE:
            return Notice(logging.INFO, f"otlp: collector at {where} took the first {spans} spans")
        return None

    def drop(self, spans: int, bound: str) -> Notice | None:
        """``spans`` dropped from a full queue (``bound`` says its limits); a line the first
        time since it drained."""
        if spans <= 0:
            return None
        self.dropped_spans += spans
        if self._overflowing:
            return None
        self._overflowing = True
        return Notice(logging.WARNING, f"otlp: queue full ({bound}); dropping the oldest spans")

    def drained(self) -> None:
        """The queue emptied: the next overflow is news again."""
        self._overflowing = False

    def snapshot(self, queued: int) -> dict[str, Any]:
        """The ``otlp`` object of ``ping`` and ``stats``."""
        return {
            "endpoint": self.endpoint,
            "state": self.state,
            "queued": queued,
            "sent_spans": self.sent_spans,
            "dropped_spans": self.dropped_spans,
            "rejected_spans": self.rejected_spans,
            "failed_requests": self.failed_requests,
            "last_error": self.last_error,
        }
