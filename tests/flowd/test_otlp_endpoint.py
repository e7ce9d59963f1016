"""Where flowd sends spans: options, the OpenTelemetry environment variables, headers, and
URLs shown without what may be credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowd.errors import OtlpSettingError
from flowd.otlp.endpoint import Endpoint, endpoint_from, shown
from tests.support.flowd import flowd
from tests.support.otlp import WAIT, Collector, run, trace_dir
from tests.support.procs import wait_for

# -- configuration --------------------------------------------------------------------------


def test_the_opentelemetry_environment_variables_are_honoured(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url + "/base/",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=a%20b,x-team=flow",
    }
    with flowd("--root", traces, state=tmp_path, env=env) as daemon:
        expected = run(traces, "wf-env")
        wait_for(lambda: len(collector.taken()) == len(expected), WAIT, "every span")
        assert {r.path for r in collector.requests} == {"/base/v1/traces"}
        assert {r.headers["x-api-key"] for r in collector.requests} == {"a b"}
    assert "(from OTEL_EXPORTER_OTLP_ENDPOINT)" in daemon.log()


def test_without_an_endpoint_ping_has_no_otlp_and_stats_says_null(tmp_path: Path) -> None:
    with flowd(state=tmp_path) as daemon, daemon.client() as client:
        assert "otlp" not in client.call("ping")
        assert client.call("stats") == {"otlp": None}
    assert "otlp" not in daemon.log()


@pytest.mark.parametrize(
    ("option", "environ", "url"),
    [
        ("http://c:4318", {}, "http://c:4318/v1/traces"),
        ("http://c:4318/", {}, "http://c:4318/v1/traces"),
        ("https://c/otlp/traces", {}, "https://c/otlp/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/x"}, "http://c:4318/x/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/t"}, "http://c:4318/t"),
        (
            "http://option",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env/t"},
            "http://option/v1/traces",
        ),
        (
            None,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces/t",
            },
            "http://traces/t",
        ),
    ],
)
def test_the_endpoint_url(option: str | None, environ: dict[str, str], url: str) -> None:
    endpoint = endpoint_from(option, [], environ)
    assert endpoint is not None and endpoint.url == url


def test_headers_from_options_replace_those_from_the_environment() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "A=1, b=2%2C3",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=4",
    }
    endpoint = endpoint_from("http://c", ["B=5", "c=x=y"], environ)
    assert endpoint == Endpoint("http://c/v1/traces", (("a", "4"), ("B", "5"), ("c", "x=y")))
    assert endpoint_from(None, [], {}) is None
    with pytest.raises(OtlpSettingError, match="control characters"):
        endpoint_from("http://c", ["a=b\r\nX-Evil: 1"], {})


def test_a_url_is_shown_without_what_may_be_credentials() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://me:s3cret@c:4318/v1/traces"}
    with pytest.raises(OtlpSettingError) as raised:
        endpoint_from(None, [], environ)
    assert raised.value.endpoint == "https://c:4318/v1/traces"
    assert "s3cret" not in str(raised.value)
    for url, seen in [
        ("http://tok3n@c", "http://c"),
        ("http://me:pa/ss@c:4318/x", "http://c:4318/x"),  # a / in the password
        ("me:s3cret@c:4318", "c:4318"),
        ("http://c:4318/v1/traces?at=@x", "http://c:4318/v1/traces"),  # the query is left out
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
    ]:
        assert shown(url) == seen
