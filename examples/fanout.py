"""Concurrent tasks: each ``Spawn``ed task's effects are recorded with its task id.

python examples/fanout.py
flowctl watch wf-fanout      # one sub-tree per live task
"""

from __future__ import annotations

import asyncio
from typing import Any

from doeff import Await, Gather, Spawn, do, slog

from doeff_flow_core import run_workflow


@do
def review(doc: str, rounds: int) -> Any:
    for n in range(rounds):
        yield slog("reviewing", doc=doc, round=n)
        yield Await(asyncio.sleep(0.1))  # other tasks run meanwhile
    return f"{doc}: approved"


@do
def fan_out(docs: list[str]) -> Any:
    tasks = []
    for i, doc in enumerate(docs):
        tasks.append((yield Spawn(review(doc, 2 + i))))
    return (yield Gather(*tasks))


if __name__ == "__main__":
    print(run_workflow(fan_out(["spec", "design", "plan"]), "wf-fanout").unwrap())
