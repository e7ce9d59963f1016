"""A workflow slow enough to watch: each cup takes two seconds.

python examples/slow.py
flowctl watch wf-slow        # in another terminal, while it runs
"""

import asyncio
from typing import Any

from doeff import Await, do, slog

from doeff_flow_core import run_workflow


@do
def brew(cup: int) -> Any:
    yield slog("brewing", cup=cup)
    yield Await(asyncio.sleep(2))  # a slow step: any awaitable, e.g. a real HTTP call
    return f"cup {cup}"


@do
def morning(cups: int) -> Any:
    done: list[str] = []
    for cup in range(1, cups + 1):
        done.append((yield brew(cup)))
    return done


if __name__ == "__main__":
    print(run_workflow(morning(3), "wf-slow").value)  # ['cup 1', 'cup 2', 'cup 3']
