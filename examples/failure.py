"""A workflow that fails: the trace ends with ``failed``, the error and the raise site.

python examples/failure.py
flowctl history wf-fail
"""

from __future__ import annotations

from typing import Any

from doeff import Get, Put, do, slog

from doeff_flow_core import run_workflow


@do
def parse(record: str) -> Any:
    yield slog("parsing", record=record)
    if not record.isdigit():
        raise ValueError(f"not a number: {record!r}")
    return int(record)


@do
def ingest(records: list[str]) -> Any:
    for record in records:
        value = yield parse(record)
        yield Put("sum", ((yield Get("sum")) or 0) + value)
    return (yield Get("sum"))


if __name__ == "__main__":
    result = run_workflow(ingest(["1", "2", "x3"]), "wf-fail")
    print("ok" if result.is_ok() else f"failed: {result.error!r}")
