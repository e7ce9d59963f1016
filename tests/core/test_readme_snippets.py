"""The README's programs run as written.

A ```python block in README.md preceded by ``<!-- runnable -->`` is a complete program: it
is run in a fresh interpreter, in a temporary directory that holds its trace directory,
and must exit 0, print what its ``print(...)  # expected`` comments say, and leave a
trace that ends ``completed``. The tour's slow example is ``examples/slow.py`` word for
word, and can be watched while it runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.flowctl import flowctl
from tests.support.procs import PROJECT_ROOT, python_env, wait_for

MARK = "<!-- runnable -->"
EXPECTED = re.compile(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$")


def python_blocks(text: str) -> list[tuple[bool, str]]:
    """(marked runnable, code) of each ```python block, in order."""
    blocks: list[tuple[bool, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            marked = i > 0 and lines[i - 1].strip() == MARK
            end = lines.index("```", i + 1)
            blocks.append((marked, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
RUNNABLE = [code for marked, code in python_blocks(README) if marked]


def test_the_quick_start_and_the_trace_observer_snippet_are_marked_runnable() -> None:
    assert any("run_workflow(" in code for code in RUNNABLE), "the quick start"
    assert any("with trace_observer(" in code for code in RUNNABLE), "trace_observer"


def test_a_marked_block_is_found_and_an_unmarked_one_is_not() -> None:
    text = f"{MARK}\n```python\nprint(1)  # 1\n```\n\n```python\nx = 2\n```\n"
    assert python_blocks(text) == [(True, "print(1)  # 1\n"), (False, "x = 2\n")]


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"block{n}" for n in range(len(RUNNABLE))])
def test_a_runnable_readme_block_runs(code: str, tmp_path: Path) -> None:
    program = tmp_path / "snippet.py"
    program.write_text(code, encoding="utf-8")
    trace_dir = tmp_path / ".doeff-flow"
    done = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=python_env({"DOEFF_FLOW_TRACE_DIR": str(trace_dir)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    expected = [m.group(1) for line in code.splitlines() if (m := EXPECTED.match(line))]
    assert done.stdout.splitlines() == expected
    traces = sorted(trace_dir.glob("*/trace.jsonl"))
    assert traces, f"no trace under {trace_dir}"
    for trace in traces:
        last = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
        assert last["status"] == "completed", last


def test_the_tours_slow_example_is_examples_slow_py() -> None:
    slow = (PROJECT_ROOT / "examples" / "slow.py").read_text(encoding="utf-8")
    assert slow in [code for _, code in python_blocks(README)]
    assert "Await(asyncio.sleep(" in slow


def test_the_slow_example_can_be_watched_while_it_runs(tmp_path: Path) -> None:
    trace_dir = str(tmp_path / ".doeff-flow")
    env = {"DOEFF_FLOW_TRACE_DIR": trace_dir}
    worker = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "examples" / "slow.py")],
        cwd=tmp_path,
        env=python_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def sleeping() -> dict[str, Any] | None:
            done = flowctl("--trace-dir", trace_dir, "history", "wf-slow", "--last", "1", "--json")
            if done.returncode != 0 or not done.stdout.strip():
                return None
            record: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
            return record if str(record["current_effect"]).startswith("Await(") else None

        record = wait_for(sleeping, timeout=20, what="wf-slow in its slow step")
        assert record["status"] == "running"
        assert [frame["function"] for frame in record["trace"]] == ["morning", "brew"]
        watched = flowctl("--trace-dir", trace_dir, "watch", "wf-slow", "--exit-on-complete")
        assert watched.returncode == 0, watched.stderr
        assert "morning › brew  ↳ Await(" in watched.stdout
        assert watched.stdout.splitlines()[-1].endswith("result: ['cup 1', 'cup 2', 'cup 3']")
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert out == "['cup 1', 'cup 2', 'cup 3']\n"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
