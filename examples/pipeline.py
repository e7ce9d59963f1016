"""A nested pipeline that reports its progress with slog: something to watch.

python examples/pipeline.py [--workflow-id etl-001] [--delay 0.3]
flowctl watch etl-001        # in another terminal, while it runs
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from doeff import Ask, Get, Put, do, slog

from doeff_flow_core import run_workflow

DELAY = 0.3


@do
def call_api(source: str, page: int) -> Any:
    yield Ask("api_token")
    time.sleep(DELAY)  # the network, standing in
    return [f"{source}-{page}-{i}" for i in range(3)]


@do
def extract(source: str, pages: int) -> Any:
    rows = []
    for page in range(pages):
        yield slog("extracting", source=source, page=page)
        rows += yield call_api(source, page)
    return rows


@do
def load(rows: list[str]) -> Any:
    loaded = (yield Get("loaded")) or 0
    yield Put("loaded", loaded + len(rows))
    return loaded + len(rows)


@do
def main_workflow(sources: list[str], pages: int) -> Any:
    total = 0
    for source in sources:
        rows = yield extract(source, pages)
        total = yield load(rows)
        yield slog("loaded", source=source, rows=len(rows))
    return total


def main() -> None:
    global DELAY
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflow-id", default="etl-001")
    parser.add_argument("--delay", type=float, default=DELAY)
    parser.add_argument("--trace-dir", default=None)
    args = parser.parse_args()
    DELAY = args.delay
    result = run_workflow(
        main_workflow(["users", "orders", "events"], 3),
        args.workflow_id,
        args.trace_dir,
        env={"api_token": "t0ken"},
    )
    print(f"loaded {result.unwrap()} rows")


if __name__ == "__main__":
    main()
