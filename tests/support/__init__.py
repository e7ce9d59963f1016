"""Helpers shared by the tests, the fault suite (``faults/``) and the benchmarks
(``bench/``); no tests here.

- ``procs``: subprocesses with the project importable, a private state home, polling.
- ``traces``: trace lines and files as tests write and read them; synthetic records.
- ``workflows``: the real doeff programs the tests run in subprocesses.
- ``rpc``: a plain JSON-RPC client for flowd's socket.
- ``flowd``: flowd as a subprocess on a socket under /tmp.
- ``flowctl``: flowctl as a process, and a real terminal (tmux) to run it in.
- ``otlp``: an OTLP/HTTP collector, and the workflows the exporter tests run.
- ``otlp_schema``: OTLP/JSON checked against the official schema.

Dependency rule: the standard library, pytest, the project's packages and the test
dependencies (``doeff``, ``opentelemetry-proto``); nothing from a test module.
"""
