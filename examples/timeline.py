"""A short workflow with what a timeline shows: nested calls, spawned tasks, slog lines.

python examples/timeline.py
flowctl export wf-timeline -o timeline.svg     # or: make timeline (docs/timeline.svg)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from doeff import Ask, Await, Gather, Get, Put, Spawn, do, slog

from doeff_flow_core import run_workflow

SOURCES = ("users", "orders", "events")


@do
def fetch(source: str, page: int) -> Any:
    yield Ask("api_token")
    yield Await(asyncio.sleep(0.03 + 0.01 * page))  # the network, standing in
    return [f"{source}-{page}-{i}" for i in range(3)]


@do
def extract(source: str, pages: int) -> Any:
    rows: list[str] = []
    for page in range(pages):
        yield slog("extracting", source=source, page=page)
        rows += yield fetch(source, page)
    return rows


@do
def transform(rows: list[str]) -> Any:
    yield Await(asyncio.sleep(0.02))
    return sorted(rows)


@do
def load(source: str, rows: list[str]) -> Any:
    loaded = (yield Get("loaded")) or 0
    yield Put("loaded", loaded + len(rows))
    yield Await(asyncio.sleep(0.015))
    yield slog("loaded", source=source, rows=len(rows))
    return len(rows)


@do
def ingest(source: str, pages: int) -> Any:
    rows = yield extract(source, pages)
    rows = yield transform(rows)
    return (yield load(source, rows))


@do
def plan() -> Any:
    yield slog("planning", sources=len(SOURCES))
    yield Await(asyncio.sleep(0.03))
    return list(SOURCES)


@do
def report(counts: list[int]) -> Any:
    yield Await(asyncio.sleep(0.02))
    yield slog("done", rows=sum(counts))
    return sum(counts)


@do
def nightly_etl() -> Any:
    sources = yield plan()
    tasks = []
    for pages, source in enumerate(sources, start=2):
        tasks.append((yield Spawn(ingest(source, pages))))
    counts = yield Gather(*tasks)
    return (yield report(counts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflow-id", default="wf-timeline")
    parser.add_argument("--trace-dir", default=None)
    args = parser.parse_args()
    result = run_workflow(
        nightly_etl(), args.workflow_id, args.trace_dir, env={"api_token": "t0ken"}
    )
    print(f"loaded {result.unwrap()} rows")


if __name__ == "__main__":
    main()
