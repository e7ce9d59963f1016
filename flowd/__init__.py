"""flowd: the optional doeff-flow daemon.

Modules: ``cli`` (options, startup), ``daemon`` (roots, the index and its watchers),
``index`` and ``stored`` (what is known of each workflow's trace), ``rpc``, ``jsonrpc``
and ``server`` (the JSON-RPC socket), ``subscriptions`` and ``outbox`` (watchers and each
connection's bounded send queue), ``discovery``, ``watching``, ``systemd``, ``errors``.
Subpackage: ``otlp`` (the OpenTelemetry exporter).

Dependency rule: flowd may import doeff_flow_core and anyio, never flowctl.
"""
