"""The quick start: run a workflow with a live trace.

python examples/quickstart.py
flowctl history wf-001
"""

from __future__ import annotations

from typing import Any

from doeff import Ask, Get, Put, do

from doeff_flow_core import run_workflow


@do
def my_workflow() -> Any:
    a = yield Ask("a")
    yield Put("b", 20)
    b = yield Get("b")
    return a + b


if __name__ == "__main__":
    result = run_workflow(my_workflow(), workflow_id="wf-001", env={"a": 10})
    print(result.value)  # 30
