"""run_workflow's API: env, store, handlers, the result, the default trace directory, storage."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from doeff import Ask, EffectBase, Get, Pass, Put, Resume, do, handler

from doeff_flow_core import (
    WorkflowFailed,
    WorkflowResult,
    effective_status,
    parse_record,
    run_workflow,
)
from doeff_flow_core.registry import registered_trace_dirs, registry_path
from tests.support.procs import wait_until
from tests.support.traces import read_jsonl


class Tag(EffectBase):  # type: ignore[misc]
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label


def tagging(name: str, seen: list[str], *, answer: bool = False) -> Any:
    """A handler for Tag that notes it saw the effect, then answers or passes it on."""

    @handler
    def tag_handler(effect: Tag, k: Any) -> Any:
        seen.append(name)
        if answer:
            return (yield Resume(k, f"{effect.label} by {name}"))
        return (yield Pass(effect, k))

    return tag_handler


@do
def uses_everything() -> Any:
    greeting = yield Ask("greeting")
    count = yield Get("count")
    yield Put("count", count + 1)
    tagged = yield Tag("t")
    return (greeting, count, (yield Get("count")), tagged)


@do
def asks_missing() -> Any:
    return (yield Ask("nope"))


@do
def small() -> Any:
    yield Put("k", 1)
    return "ok"


def test_env_store_and_handlers(tmp_path: Path) -> None:
    seen: list[str] = []
    handlers = [tagging("outer", seen, answer=True), tagging("inner", seen)]
    result = run_workflow(
        uses_everything(), "wf-api", tmp_path, env={"greeting": "hi"}, store={"count": 41},
        handlers=handlers,
    )  # fmt: skip
    assert result.is_ok() and not result.is_err()
    assert result.error is None
    assert result.value == ("hi", 41, 42, "t by outer")
    assert seen == ["inner", "outer"]  # first handler outermost: the last one sees it first
    records = read_jsonl(result.trace_path)
    tag_record = next(r for r in records if r["current_effect"] == "Tag(label='t')")
    assert tag_record["trace_exact"] is True  # the tracer sits inside the caller's handlers
    assert [f["function"] for f in tag_record["trace"]] == ["uses_everything"]
    assert records[-1]["run"] == result.run_id
    assert result.unwrap() == result.value


def test_failed_result_holds_the_exception(tmp_path: Path) -> None:
    result = run_workflow(asks_missing(), "wf-missing", tmp_path, env={"other": 1})
    assert isinstance(result, WorkflowResult)
    assert not result.is_ok() and result.is_err()
    assert result.value is None
    assert isinstance(result.error, Exception)
    assert "nope" in str(result.error)
    with pytest.raises(WorkflowFailed) as info:
        result.unwrap()
    assert info.value.__cause__ is result.error
    assert "wf-missing" in str(info.value)
    terminal = read_jsonl(result.trace_path)[-1]
    assert terminal["status"] == "failed"
    assert terminal["error"].startswith(type(result.error).__name__ + ": ")


def test_store_is_copied_not_mutated(tmp_path: Path) -> None:
    store = {"count": 1}
    result = run_workflow(uses_everything(), "wf-copy", tmp_path, env={"greeting": "x"},
                          store=store, handlers=[tagging("only", [], answer=True)])  # fmt: skip
    assert result.value == ("x", 1, 2, "t by only")
    assert store == {"count": 1}


def test_trace_dir_defaults_to_dot_doeff_flow_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_workflow(small(), "wf-default")
    expected = tmp_path / ".doeff-flow" / "wf-default" / "trace.jsonl"
    assert result.trace_path == expected
    assert read_jsonl(expected)[-1]["status"] == "completed"


def test_trace_dir_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOEFF_FLOW_TRACE_DIR", str(tmp_path / "from-env"))
    result = run_workflow(small(), "wf-env", None)
    assert result.trace_path == tmp_path / "from-env" / "wf-env" / "trace.jsonl"
    assert result.trace_path.exists()
    assert not (tmp_path / ".doeff-flow").exists()


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_trace_dir_as_str_or_path_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: Callable[[str], Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOEFF_FLOW_TRACE_DIR", str(tmp_path / "ignored"))
    result = run_workflow(small(), "wf-rel", kind("rel/traces"))
    assert result.trace_path == tmp_path / "rel" / "traces" / "wf-rel" / "trace.jsonl"
    assert result.trace_path.is_absolute()
    assert read_jsonl(result.trace_path)[-1]["result"] == "'ok'"
    assert not (tmp_path / "ignored").exists()


def test_trace_dir_is_registered_once(tmp_path: Path, state_home: Path) -> None:
    run_workflow(small(), "wf-reg-a", tmp_path / "traces")
    run_workflow(small(), "wf-reg-b", str(tmp_path / "traces"))
    run_workflow(small(), "wf-reg-a", tmp_path / "other")
    assert registry_path() == state_home / "doeff-flow" / "trace-dirs"
    lines = registry_path().read_text().splitlines()
    assert lines == [str(tmp_path / "traces"), str(tmp_path / "other")]
    assert registered_trace_dirs() == [tmp_path / "traces", tmp_path / "other"]


# -- durable re-run over SQLite storage -------------------------------------------------

DURABLE_WORKFLOW = """
import json, os, sys, time
from pathlib import Path
from doeff import do, slog
from doeff_core_effects.storage import SQLiteStorage
from doeff_flow_core import run_workflow

base, block_at, go = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

# Warm up (doeff's @cache and memo handler are Hy, compiled on import: seconds) on a
# storage of this process's own, then wait for the go: the shared storage is opened only
# then, so the two runs never open it at once (SQLite would say "database is locked").
from doeff_core_effects.cache import cache
from doeff_core_effects.memo_handlers import memo_handler
memo_handler(SQLiteStorage(base / f"warm-{os.getpid()}.sqlite"))
while go != "-" and not Path(go).exists():
    time.sleep(0.005)
storage = SQLiteStorage(base / "memo.sqlite")

@cache()
@do
def step(i):
    with open(base / "ran.log", "a") as log:
        log.write(f"{i}\\n")
    yield slog("step", i=i)
    if i == block_at:
        (base / "blocked").write_text("yes")
        time.sleep(60)
    return i * 10

@do
def main():
    out = []
    for i in range(4):
        out.append((yield step(i)))
    return out

result = run_workflow(main(), "wf-durable", base / "traces", storage=storage)
print(json.dumps({"value": result.value, "error": repr(result.error), "run": result.run_id}))
"""


def test_rerun_after_kill_answers_finished_steps_from_storage(
    tmp_path: Path, start_python: Callable[..., Any]
) -> None:
    go = tmp_path / "go"
    # The second run starts warming up now, and runs once the first is killed.
    second = start_python(DURABLE_WORKFLOW, tmp_path, -1, go)
    first = start_python(DURABLE_WORKFLOW, tmp_path, 2, "-")
    # Both processes compile doeff's Hy modules first: ~15 s each of a core here.
    assert wait_until(lambda: (tmp_path / "blocked").exists() or first.poll() is not None, 120)
    if not (tmp_path / "blocked").exists():
        _, stderr = first.communicate()
        raise AssertionError(f"the first run never reached step 2: {stderr[-2000:]}")
    trace = tmp_path / "traces" / "wf-durable" / "trace.jsonl"
    assert wait_until(lambda: "i=2)" in trace.read_text(), 5), "step 2 never reached the trace"
    first.kill()
    first.wait()
    assert (tmp_path / "ran.log").read_text().split() == ["0", "1", "2"]

    go.touch()
    stdout, stderr = second.communicate(timeout=60)
    assert second.returncode == 0, stderr
    outcome = json.loads(stdout)
    assert outcome["value"] == [0, 10, 20, 30], outcome
    # Steps 0 and 1 finished before the kill: their bodies did not run again.
    assert (tmp_path / "ran.log").read_text().split() == ["0", "1", "2", "2", "3"]

    records = read_jsonl(trace)
    runs = list(dict.fromkeys(r["run"] for r in records))
    assert len(runs) == 2 and runs[1] == outcome["run"]
    killed = [r for r in records if r["run"] == runs[0]]
    assert effective_status(parse_record(json.dumps(killed[-1]))) == "lost"
    rerun = [r["current_effect"] or "" for r in records if r["run"] == runs[1]]
    for i in (0, 1):
        assert any(e.startswith("MemoGet(") and f"({i},)" in e for e in rerun), rerun
        assert not any(e.startswith("slog('step'") and f"i={i}" in e for e in rerun)
    for i in (2, 3):
        assert any(e.startswith("slog('step'") and f"i={i}" in e for e in rerun)
    assert records[-1]["status"] == "completed"


def test_environment_is_untouched_by_run_workflow(tmp_path: Path) -> None:
    before = dict(os.environ)
    run_workflow(small(), "wf-env-untouched", tmp_path)
    assert dict(os.environ) == before


def test_run_workflow_leaves_nothing_behind(tmp_path: Path) -> None:
    from doeff_core_effects import scheduler

    sink = scheduler.scheduler_trace_sink()
    fds = set(os.listdir("/proc/self/fd"))
    threads = set(threading.enumerate())
    run_workflow(small(), "wf-clean", tmp_path)
    run_workflow(asks_missing(), "wf-clean", tmp_path)
    assert set(os.listdir("/proc/self/fd")) == fds  # the trace file is closed
    assert wait_until(lambda: set(threading.enumerate()) == threads, 2)  # no flusher left
    assert scheduler.scheduler_trace_sink() is sink  # the task-event sink is put back


def test_registry_keeps_a_directory_with_a_unicode_line_separator(tmp_path: Path) -> None:
    odd = tmp_path / "traces\u2028odd"
    run_workflow(small(), "wf-odd", odd)
    run_workflow(small(), "wf-odd", odd)
    assert registered_trace_dirs() == [odd]
    assert registry_path().read_text().count("odd") == 1
