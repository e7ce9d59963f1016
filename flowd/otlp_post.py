"""One OTLP/HTTP export request: spans encoded as OTLP/JSON, POSTed with the standard
library's HTTP client. Blocking: flowd calls ``post`` in a worker thread."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Final

from doeff_flow_core.otlp import request_json
from doeff_flow_core.spans import Span
from flowd.export_health import Outcome, answer, no_answer
from flowd.otlp_endpoint import Endpoint

ANSWER_BYTES: Final = 64 * 1024  # read of a collector's answer, at most
USER_AGENT: Final = "doeff-flow-flowd"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is for a POST: the batch is not resent
    elsewhere (urllib would turn it into a GET without the body)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirects)


def encode(spans: Sequence[Span]) -> bytes:
    return request_json(spans).encode("utf-8")


def post(endpoint: Endpoint, spans: Sequence[Span], timeout: float) -> Outcome:
    """Send ``spans`` in one export request; what came of it."""
    headers = {"User-Agent": USER_AGENT, **dict(endpoint.headers)}
    headers["Content-Type"] = "application/json"  # urllib folds the names' case together
    request = urllib.request.Request(
        endpoint.url, data=encode(spans), headers=headers, method="POST"
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return answer(response.status, response.reason, response.read(ANSWER_BYTES))
    except urllib.error.HTTPError as error:
        with error:
            return answer(error.code, str(error.reason or ""), _body_of(error))
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        return no_answer(error)


def _body_of(error: urllib.error.HTTPError) -> bytes:
    """What came with an error status; it only helps to say why, so a failure to read it
    is no failure."""
    try:
        return error.read(ANSWER_BYTES) if error.fp is not None else b""
    except (OSError, http.client.HTTPException):
        return b""
