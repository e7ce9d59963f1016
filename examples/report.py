"""A report over regions, fetched page by page in spawned tasks; with ``--fail`` one page
of one region fails. Something to profile and to draw.

python examples/report.py --fail            # workflow id report-fail
flowctl profile report-fail                  # where the time went
flowctl export report-fail -o report.svg     # which region failed, and in which call
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from doeff import Ask, Await, Gather, Spawn, do, slog

from doeff_flow_core import run_workflow

REGIONS = ("emea", "apac", "latam")
PAGES = 4
LATENCY = {"emea": 0.005, "apac": 0.04, "latam": 0.025}  # seconds per page
FAILING = ("latam", 1)  # with --fail: this region's page raises (emea is done by then)


class UpstreamError(RuntimeError):
    """The region's service answered with an error."""


@do
def fetch_page(region: str, page: int, fail: bool) -> Any:
    yield Ask("api_token")
    yield Await(asyncio.sleep(LATENCY[region]))  # the network, standing in
    if fail and (region, page) == FAILING:
        raise UpstreamError(f"{region} page {page}: upstream returned 503")
    return [f"{region}-{page}-{row}" for row in range(3)]


@do
def fetch_region(region: str, pages: int, fail: bool) -> Any:
    rows: list[str] = []
    for page in range(pages):
        yield slog("fetching", region=region, page=page)
        rows += yield fetch_page(region, page, fail)
    return rows


@do
def summarize(parts: list[list[str]]) -> Any:
    yield Await(asyncio.sleep(0.01))
    return sum(len(rows) for rows in parts)


@do
def build_report(fail: bool) -> Any:
    tasks = []
    for region in REGIONS:
        tasks.append((yield Spawn(fetch_region(region, PAGES, fail))))
    parts = yield Gather(*tasks)
    return (yield summarize(parts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail", action="store_true", help="one region's page fails")
    parser.add_argument("--workflow-id", default=None, help="report or report-fail")
    parser.add_argument("--trace-dir", default=None)
    args = parser.parse_args()
    workflow_id = args.workflow_id or ("report-fail" if args.fail else "report")
    result = run_workflow(
        build_report(args.fail), workflow_id, args.trace_dir, env={"api_token": "t0ken"}
    )
    print(f"{result.unwrap()} rows" if result.is_ok() else f"failed: {result.error}")


if __name__ == "__main__":
    main()
