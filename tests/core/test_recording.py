"""What the tracer records for real doeff 0.8 programs, through run_workflow and trace_observer."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import doeff
import pytest
from doeff import EffectBase, Gather, Get, Put, Resume, Spawn, do, handler, slog, with_handlers
from doeff_core_effects import reader, scheduled, slog_discard_handler, state

from doeff_flow_core import parse_record, run_workflow, trace_observer
from tests.support.traces import line_of, read_jsonl

HERE = os.path.abspath(__file__)
EXACT_TRACER = sys.version_info >= (3, 12)

# -- workflows under test ---------------------------------------------------------------


@do
def leaf(i: int) -> Any:
    x = yield Get("x")
    yield Put("x", x + i)
    return x


@do
def middle(n: int) -> Any:
    total = 0
    for i in range(n):
        total += yield leaf(i)
    return total


@do
def pipeline() -> Any:
    yield slog("start", phase="load", n=2)
    total = yield middle(2)
    yield slog("done", total=total)
    return {"total": total}


@do
def worker(n: int) -> Any:
    yield slog("worker", n=n)
    value = yield Get(f"k{n}")
    return value * n


@do
def fan_out() -> Any:
    tasks = []
    for n in (2, 3):
        tasks.append((yield Spawn(worker(n))))
    results = yield Gather(*tasks)
    return results


class Ping(EffectBase):  # type: ignore[misc]
    def __init__(self, x: int) -> None:
        super().__init__()
        self.x = x


class Carry(EffectBase):  # type: ignore[misc]
    """An effect whose default repr would show addresses."""

    def __init__(self, obj: object, fn: Callable[..., object], big: str) -> None:
        super().__init__()
        self.obj = obj
        self.fn = fn
        self.big = big


@handler
def ping_handler(effect: Ping, k: Any) -> Any:
    return (yield Resume(k, effect.x * 2))


@handler
def carry_handler(effect: Carry, k: Any) -> Any:
    return (yield Resume(k, len(effect.big)))


@do
def pinged() -> Any:
    a = yield Ping(3)
    b = yield Ping(4)
    return a + b


@do
def self_handled() -> Any:
    before = yield Get("x")
    pings = yield with_handlers([ping_handler], pinged())
    yield Put("x", before + pings)
    return pings


@do
def carrying() -> Any:
    size = yield Carry(object(), carrying, "y" * 1000)
    return size


@do
def fail_leaf() -> Any:
    yield Get("x")
    raise ValueError("boom")


@do
def fail_mid() -> Any:
    return (yield fail_leaf())


@do
def fail_top() -> Any:
    yield slog("about to fail")
    return (yield fail_mid())


@do
def failing_worker() -> Any:
    yield Get("x")
    raise RuntimeError("child broke")


@do
def fail_in_task() -> Any:
    task = yield Spawn(failing_worker())
    return (yield Gather(task))


# -- running them two ways --------------------------------------------------------------


@dataclass
class Outcome:
    value: Any
    error: BaseException | None
    records: list[dict[str, Any]]


def via_run_workflow(
    program: Any, trace_dir: Path, store: dict[str, Any], handlers: Sequence[Any] = ()
) -> Outcome:
    result = run_workflow(program, "wf", trace_dir, store=store, handlers=handlers)
    assert result.trace_path == trace_dir / "wf" / "trace.jsonl"
    return Outcome(result.value, result.error, read_jsonl(result.trace_path))


def via_trace_observer(
    program: Any, trace_dir: Path, store: dict[str, Any], handlers: Sequence[Any] = ()
) -> Outcome:
    stack = [reader({}), state(store), slog_discard_handler, *handlers]
    value, error = None, None
    try:
        with trace_observer("wf", str(trace_dir)) as observe:
            value = doeff.run(scheduled(with_handlers(stack, observe(program))))
    except Exception as exc:  # the workflow's exception comes out of the `with`
        error = exc
    return Outcome(value, error, read_jsonl(trace_dir / "wf" / "trace.jsonl"))


RUNNERS = [via_run_workflow, via_trace_observer]
runners = pytest.mark.parametrize("run", RUNNERS, ids=["run_workflow", "trace_observer"])
Runner = Callable[..., Outcome]


def check_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run: running records with steps 1..n, then one terminal record; returns it."""
    assert records, "no records"
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert [r["status"] for r in records[:-1]] == ["running"] * (len(records) - 1)
    terminal = records[-1]
    assert terminal["status"] in ("completed", "failed")
    assert terminal["current_effect"] is None
    for name in ("run", "pid", "host", "started_at", "pid_start"):
        assert len({str(r[name]) for r in records}) == 1, name
    for record in records:
        parse_record(_json(record))  # every record passes the strict reader
        effect = record["current_effect"]
        assert effect is None or (" object at 0x" not in effect and len(effect) <= 200)
    return terminal


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record)


def frames(record: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(f["function"], f["file"], f["line"]) for f in record["trace"]]


def running(outcome: Outcome) -> list[dict[str, Any]]:
    return [r for r in outcome.records if r["status"] == "running"]


# -- tests ------------------------------------------------------------------------------


@runners
def test_one_record_per_effect_then_completed(tmp_path: Path, run: Runner) -> None:
    outcome = run(pipeline(), tmp_path, {"x": 10})
    assert outcome.error is None and outcome.value == {"total": 20}
    terminal = check_run(outcome.records)
    effects = [r["current_effect"] for r in running(outcome)]
    assert effects[0].startswith("slog('start'")
    assert effects[1:5] == ["Get('x')", "Put('x', 10)", "Get('x')", "Put('x', 11)"]
    assert effects[5].startswith("slog('done'")
    assert len(effects) == 6
    assert terminal["status"] == "completed"
    assert terminal["result"] == "{'total': 20}"
    assert terminal["error"] is None
    assert terminal["trace"] == []


@runners
def test_trace_is_outermost_first_with_exact_lines(tmp_path: Path, run: Runner) -> None:
    outcome = run(pipeline(), tmp_path, {"x": 10})
    records = running(outcome)
    at_pipeline = ("pipeline", HERE, line_of(pipeline, "yield middle("))
    at_middle = ("middle", HERE, line_of(middle, "yield leaf("))
    get_x = ("leaf", HERE, line_of(leaf, 'yield Get("x")'))
    put_x = ("leaf", HERE, line_of(leaf, 'yield Put("x"'))
    assert frames(records[0]) == [("pipeline", HERE, line_of(pipeline, 'slog("start"'))]
    assert frames(records[1]) == [at_pipeline, at_middle, get_x]
    assert frames(records[2]) == [at_pipeline, at_middle, put_x]
    assert frames(records[3]) == [at_pipeline, at_middle, get_x]
    assert frames(records[5]) == [("pipeline", HERE, line_of(pipeline, 'slog("done"'))]
    assert all(r["trace_exact"] is True for r in records)
    for frame in records[2]["trace"]:
        assert frame["code"] == Path(HERE).read_text().splitlines()[frame["line"] - 1].strip()


@runners
def test_slog_becomes_last_slog_of_later_records(tmp_path: Path, run: Runner) -> None:
    outcome = run(pipeline(), tmp_path, {"x": 10})
    start = {"msg": "start", "fields": {"phase": "load", "n": "2"}}  # text as itself
    done = {"msg": "done", "fields": {"total": "20"}}
    assert [r["last_slog"] for r in outcome.records] == [start] * 5 + [done] * 2


@runners
def test_process_fields(tmp_path: Path, run: Runner) -> None:
    outcome = run(pipeline(), tmp_path, {"x": 10})
    first = outcome.records[0]
    assert first["workflow_id"] == "wf"
    assert first["pid"] == os.getpid()
    assert first["host"] == socket.gethostname()
    assert re.fullmatch(r"[0-9a-f]{12}", first["run"])
    assert isinstance(first["pid_start"], int)
    stamps = [parse_record(_json(r)).updated_at for r in outcome.records]
    assert stamps == sorted(stamps)
    assert all(s.utcoffset() is not None for s in stamps)
    assert parse_record(_json(first)).started_at <= stamps[0]


@runners
def test_spawned_tasks_carry_task_ids(tmp_path: Path, run: Runner) -> None:
    outcome = run(fan_out(), tmp_path, {"k2": 10, "k3": 10})
    assert outcome.value == [20, 30]
    terminal = check_run(outcome.records)
    assert terminal["result"] == "[20, 30]"
    records = running(outcome)
    spawns = [r for r in records if r["current_effect"].startswith("Spawn(")]
    gathers = [r for r in records if r["current_effect"].startswith("Gather(")]
    assert len(spawns) == 2 and len(gathers) == 1
    assert len(records) == 7  # 2 Spawn, 2 x (slog, Get), Gather: nothing more, nothing twice
    spawn_line = ("fan_out", HERE, line_of(fan_out, "yield Spawn("))
    for record in spawns:
        assert record["task"] is None
        assert frames(record) == [spawn_line]
    assert gathers[0]["task"] is None
    assert frames(gathers[0]) == [("fan_out", HERE, line_of(fan_out, "yield Gather("))]
    task_of: dict[int, set[object]] = {}
    for n in (2, 3):
        mine = [
            r for r in records if f"k{n}" in r["current_effect"] or f"n={n}" in r["current_effect"]
        ]
        assert len(mine) == 2, mine
        task_of[n] = {r["task"] for r in mine}
        assert frames(mine[1]) == [("worker", HERE, line_of(worker, "yield Get(f"))]
    assert all(len(ids) == 1 and isinstance(next(iter(ids)), int) for ids in task_of.values())
    assert task_of[2] != task_of[3]


@runners
def test_effects_answered_inside_the_workflow_are_recorded(tmp_path: Path, run: Runner) -> None:
    outcome = run(self_handled(), tmp_path, {"x": 1})
    assert outcome.value == 14
    check_run(outcome.records)
    records = running(outcome)
    # The fallback tracer cannot know their stacks; the exact one (3.12+) can.
    exact = EXACT_TRACER
    assert [(r["current_effect"], r["trace_exact"]) for r in records] == [
        ("Get('x')", True),
        ("Ping(x=3)", exact),
        ("Ping(x=4)", exact),
        ("Put('x', 15)", True),
    ]
    assert frames(records[3]) == [("self_handled", HERE, line_of(self_handled, "yield Put("))]
    if exact:
        caller = ("self_handled", HERE, line_of(self_handled, "with_handlers([ping_handler]"))
        assert frames(records[1]) == [caller, ("pinged", HERE, line_of(pinged, "Ping(3)"))]
        assert frames(records[2]) == [caller, ("pinged", HERE, line_of(pinged, "Ping(4)"))]


@runners
def test_effect_answered_by_callers_handler_is_exact_and_readable(
    tmp_path: Path, run: Runner
) -> None:
    outcome = run(carrying(), tmp_path, {}, handlers=[carry_handler])
    assert outcome.value == 1000
    check_run(outcome.records)
    [record] = running(outcome)
    effect = record["current_effect"]
    assert effect.startswith("Carry(")
    assert "obj=" in effect and "fn=" in effect
    assert " at 0x" not in effect
    assert len(effect) <= 200
    assert record["trace_exact"] is True
    assert frames(record) == [("carrying", HERE, line_of(carrying, "yield Carry("))]


@runners
def test_failure_records_error_and_raise_site(tmp_path: Path, run: Runner) -> None:
    outcome = run(fail_top(), tmp_path, {"x": 1})
    assert isinstance(outcome.error, ValueError) and str(outcome.error) == "boom"
    terminal = check_run(outcome.records)
    assert terminal["status"] == "failed"
    assert terminal["error"] == "ValueError: boom"
    assert terminal["result"] is None
    assert frames(terminal) == [
        ("fail_top", HERE, line_of(fail_top, "yield fail_mid()")),
        ("fail_mid", HERE, line_of(fail_mid, "yield fail_leaf()")),
        ("fail_leaf", HERE, line_of(fail_leaf, 'raise ValueError("boom")')),
    ]
    assert terminal["last_slog"] == {"msg": "about to fail", "fields": {}}
    assert [r["current_effect"] for r in running(outcome)][1:] == ["Get('x')"]


@runners
def test_failure_in_spawned_task_ends_at_its_raise(tmp_path: Path, run: Runner) -> None:
    outcome = run(fail_in_task(), tmp_path, {"x": 1})
    assert isinstance(outcome.error, RuntimeError)
    terminal = check_run(outcome.records)
    assert terminal["error"] == "RuntimeError: child broke"
    assert frames(terminal)[-1] == (
        "failing_worker",
        HERE,
        line_of(failing_worker, 'raise RuntimeError("child broke")'),
    )


def test_trace_observer_lets_the_exception_out_and_records_failed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"):  # noqa: SIM117 - the order matters here
        with trace_observer("wf-obs", tmp_path) as observe:
            doeff.run(state({"x": 0})(slog_discard_handler(observe(fail_top()))))
    terminal = check_run(read_jsonl(tmp_path / "wf-obs" / "trace.jsonl"))
    assert (terminal["status"], terminal["error"]) == ("failed", "ValueError: boom")
    assert [f[0] for f in frames(terminal)] == ["fail_top", "fail_mid", "fail_leaf"]


def test_keyboard_interrupt_is_recorded_and_reraised(tmp_path: Path) -> None:
    @do
    def interrupted() -> Any:
        yield Get("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_workflow(interrupted(), "wf-ki", tmp_path)
    terminal = check_run(read_jsonl(tmp_path / "wf-ki" / "trace.jsonl"))
    assert terminal["status"] == "failed"
    assert terminal["error"].startswith("KeyboardInterrupt")


@runners
def test_rerun_appends_a_second_run(tmp_path: Path, run: Runner) -> None:
    first = run(pipeline(), tmp_path, {"x": 10})
    second = run(fail_top(), tmp_path, {"x": 10})
    records = second.records
    assert records[: len(first.records)] == first.records  # appended, not rewritten
    runs = list(dict.fromkeys(r["run"] for r in records))
    assert len(runs) == 2
    by_run = [[r for r in records if r["run"] == run_id] for run_id in runs]
    assert check_run(by_run[0])["status"] == "completed"
    assert check_run(by_run[1])["status"] == "failed"
    assert by_run[1][0]["started_at"] >= by_run[0][-1]["started_at"]


def test_two_workflows_traced_at_once_in_two_threads(tmp_path: Path) -> None:
    results: dict[str, Any] = {}

    def run_one(name: str) -> None:
        results[name] = run_workflow(fan_out(), name, tmp_path, store={"k2": 1, "k3": 1})

    threads = [threading.Thread(target=run_one, args=(name,)) for name in ("wf-t1", "wf-t2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("wf-t1", "wf-t2"):
        assert results[name].value == [2, 3]
        records = read_jsonl(results[name].trace_path)
        assert {r["workflow_id"] for r in records} == {name}
        assert check_run(records)["result"] == "[2, 3]"
        workers = [r for r in records if "worker" in {f["function"] for f in r["trace"]}]
        assert len(workers) == 4
        assert all(isinstance(r["task"], int) for r in workers)
