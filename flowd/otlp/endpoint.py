"""Where flowd sends spans: the collector's URL and headers, from options or environment.

Pure: options and an environment mapping in, an ``Endpoint`` (or None: not configured)
out, or an ``OtlpSettingError`` saying what is wrong. The URL is chosen in this order:

- ``--otlp-endpoint URL``: POST to URL; when its path is empty or ``/``, to
  ``URL/v1/traces`` (the OTLP/HTTP default path);
- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: POST to it as given (the OpenTelemetry rule
  for a signal's own endpoint);
- ``OTEL_EXPORTER_OTLP_ENDPOINT``: a base URL, ``/v1/traces`` appended to its path.

Headers: ``OTEL_EXPORTER_OTLP_HEADERS``, then ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``
(``k=v,k2=v2``, values percent-decoded), then each ``--otlp-header K=V``; a later one
replaces an earlier one of the same name (names compare without case). A URL is logged
and reported only through ``shown``: ``scheme://host:port/path``, without what may be
credentials (userinfo, the query, a fragment), escaped and bounded.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from doeff_flow_core.escape import safe_clip
from flowd.errors import InvalidOtlpEndpoint, InvalidOtlpHeader, OtlpHeaderWithoutEndpoint

TRACES_PATH: Final = "/v1/traces"
OPTION: Final = "--otlp-endpoint"
HEADER_OPTION: Final = "--otlp-header"
ENDPOINT_VAR: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_VAR: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
HEADERS_VAR: Final = "OTEL_EXPORTER_OTLP_HEADERS"
TRACES_HEADERS_VAR: Final = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
SHOWN_CHARS: Final = 200  # of a URL in a log line or an answer

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP field name (RFC 9110)
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF and other controls

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Endpoint:
    url: str  # where each export request is POSTed
    headers: Headers = ()
    source: str = OPTION  # which option or variable named the URL

    @property
    def shown(self) -> str:
        """The URL as logged and reported."""
        return shown(self.url)


def endpoint_from(
    option: str | None, header_options: Sequence[str], environ: Mapping[str, str]
) -> Endpoint | None:
    """The endpoint configured, None when none is; ``OtlpSettingError`` when it is wrong."""
    chosen = _chosen_url(option, environ)
    if chosen is None:
        if header_options:
            raise OtlpHeaderWithoutEndpoint()
        return None
    given, source = chosen
    url = _post_url(given, source)
    given = shown(given)  # header errors repeat it
    headers: dict[str, tuple[str, str]] = {}
    for var in (HEADERS_VAR, TRACES_HEADERS_VAR):
        for item in filter(str.strip, environ.get(var, "").split(",")):
            name, value = _header(item, var, given, decode=True)
            headers[name.lower()] = (name, value)
    for item in header_options:
        name, value = _header(item, HEADER_OPTION, given, decode=False)
        headers[name.lower()] = (name, value)
    return Endpoint(url, tuple(headers.values()), source)


def _chosen_url(option: str | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    if option is not None:
        return option, OPTION
    for var in (TRACES_ENDPOINT_VAR, ENDPOINT_VAR):
        value = environ.get(var, "").strip()
        if value:
            return value, var
    return None


def shown(url: str) -> str:
    """``url`` fit to log and report: ``scheme://host:port/path`` and nothing else. The
    query and fragment go (``?api_key=...``), and so does whatever may be credentials:
    anything up to an ``@`` before them, past the scheme (wider than urllib's userinfo: a
    password with a ``/`` in it would otherwise show as a host and path). Escaped and
    bounded, since a URL that is refused may hold anything."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    return safe_clip(f"{scheme}{separator}{rest[at + 1 : end]}", SHOWN_CHARS)


def _post_url(given: str, source: str) -> str:
    """The URL to POST to, after checking ``given`` is an http(s) URL with a host."""
    url = shown(given)  # what an error repeats
    if not given or _BAD_VALUE.search(given) or any(char.isspace() for char in given):
        raise InvalidOtlpEndpoint(url, source, "empty, or holds spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(given)
    except ValueError:  # an unclosed [IPv6 address]
        raise InvalidOtlpEndpoint(url, source, "the host is not valid") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidOtlpEndpoint(url, source, "the scheme must be http or https")
    if not parts.hostname:
        raise InvalidOtlpEndpoint(url, source, "no host")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:  # urllib's message quotes the port as written (maybe a password's end)
        raise InvalidOtlpEndpoint(url, source, "the port is not a number from 0 to 65535") from None
    if parts.username is not None or parts.password is not None:
        raise InvalidOtlpEndpoint(
            url, source, f"credentials in a URL are not sent; use {HEADER_OPTION}"
        )
    if parts.fragment:
        raise InvalidOtlpEndpoint(url, source, "a URL to POST to has no #fragment")
    if source == TRACES_ENDPOINT_VAR:
        return given
    if source == ENDPOINT_VAR or parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + TRACES_PATH))
    return given


def _header(item: str, source: str, endpoint: str, decode: bool) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not equals:
        raise InvalidOtlpHeader(None, source, "not NAME=VALUE", endpoint)
    if not _TOKEN.fullmatch(name):
        raise InvalidOtlpHeader(None, source, "the name is not an HTTP header name", endpoint)
    if decode:
        value = urllib.parse.unquote(value)
    if _BAD_VALUE.search(value):
        raise InvalidOtlpHeader(name, source, "the value holds control characters", endpoint)
    try:
        value.encode("latin-1")  # what HTTP/1.1 header values can carry
    except UnicodeEncodeError:
        raise InvalidOtlpHeader(name, source, "the value is not Latin-1 text", endpoint) from None
    return name, value
