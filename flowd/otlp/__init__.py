"""flowd's OpenTelemetry exporter: finished spans of every workflow to an OTLP/HTTP
collector.

- ``feed``: ``SpanFeed``: spans from the records the index reads (runs found mid-way
  rebuilt from their traces, runs whose writer died swept).
- ``queue``: ``SpanQueue``: the bounded queue of spans waiting to be sent.
- ``exporter``: ``Exporter``: batches from the queue, sent, retried with backoff.
- ``post``: one OTLP/JSON request, POSTed within a deadline.
- ``endpoint``: the collector's URL and headers, from options or environment; the URL as
  logged and reported (``scheme://host:port/path``: no credentials, query or fragment).
- ``health``: each request's outcome, the counters ``ping`` and ``stats`` report, log lines;
  a collector's words escaped (``doeff_flow_core.escape``) and bounded.

Dependency rule: may import the standard library, ``doeff_flow_core``, ``anyio`` and
flowd's own modules (the index, its lines, its errors); never ``flowctl``.
"""
