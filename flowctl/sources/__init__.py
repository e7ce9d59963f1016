"""Where flowctl gets workflows and records from: one interface, two implementations.

- ``base``: the data-source interface (``Source``, ``Feed``, ``DirectoryFeed``) and what
  it returns (``WorkflowEntry``, ``History``, ``FeedUpdate``, ``DirectoryUpdate``).
- ``files``: ``FileSource``, over the trace files (through ``doeff_flow_core.tracefiles``).
- ``daemon``: ``DaemonSource``, the same calls over flowd's socket, with ``rpc``, its
  JSON-RPC client.
- ``connect``: ``open_source`` chooses: flowd when its socket answers, else the files.
- ``failover``: ``FailoverSource``, flowd for live views that go on from the files
  while flowd is away and back to flowd when it returns (``connect.resilient``).

Dependency rule: may import the standard library, ``doeff_flow_core`` and flowctl's
``errors`` and ``options``; nothing that renders, watches or exports, and never ``flowd``
(the daemon is reached through its socket protocol only).
"""
