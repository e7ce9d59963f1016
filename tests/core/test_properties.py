"""Tracing never changes what a workflow returns or raises (generated programs)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import doeff
from doeff import Gather, Get, Put, Spawn, do, slog, with_handlers
from doeff_core_effects import scheduled, slog_discard_handler, state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doeff_flow_core import run_workflow, trace_observer
from tests.support.traces import read_jsonl

ERRORS = {"ValueError": ValueError, "KeyError": KeyError, "RuntimeError": RuntimeError}
KEYS = ("a", "b")
INITIAL = {"a": 1}

# A program is a list of operations; "call", "try" and "spawn" hold a nested list.
keys = st.sampled_from(KEYS)
leaves = st.one_of(
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("put"), keys, st.integers(-3, 3)),
    st.tuples(st.just("slog"), st.text(max_size=4)),
    st.tuples(st.just("raise"), st.sampled_from(sorted(ERRORS)), st.text(max_size=4)),
)
programs = st.recursive(
    st.lists(leaves, max_size=5),
    lambda inner: st.lists(
        st.one_of(leaves, st.tuples(st.sampled_from(["call", "try", "spawn"]), inner)),
        max_size=5,
    ),
    max_leaves=12,
)


@do
def interpret(ops: list[tuple[Any, ...]]) -> Any:
    acc: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind == "get":
            acc.append((yield Get(op[1])))
        elif kind == "put":
            yield Put(op[1], op[2])
        elif kind == "slog":
            yield slog(op[1], seen=len(acc))
        elif kind == "raise":
            raise ERRORS[op[1]](op[2])
        elif kind == "call":
            acc.append((yield interpret(op[1])))
        elif kind == "try":
            try:
                acc.append((yield interpret(op[1])))
            except ValueError as exc:
                acc.append(("caught", str(exc)))
        else:  # spawn
            task = yield Spawn(interpret(op[1]))
            acc.append((yield Gather(task)))
    return (tuple(acc), (yield Get("a")), (yield Get("b")))


def outcome_of(run: Any) -> tuple[Any, ...]:
    try:
        return ("ok", run())
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def untraced(ops: list[Any]) -> Any:
    stack = [state(dict(INITIAL)), slog_discard_handler]
    return doeff.run(scheduled(with_handlers(stack, interpret(ops))))


def observed(ops: list[Any], trace_dir: Path) -> Any:
    stack = [state(dict(INITIAL)), slog_discard_handler]
    with trace_observer("prop-observer", trace_dir) as observe:
        return doeff.run(scheduled(with_handlers(stack, observe(interpret(ops)))))


def via_run_workflow(ops: list[Any], trace_dir: Path) -> Any:
    result = run_workflow(interpret(ops), "prop-run", trace_dir, store=INITIAL)
    if result.error is not None:
        raise result.error
    return result.value


def check_terminal(path: Path, outcome: tuple[Any, ...]) -> None:
    records = read_jsonl(path)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    terminal = records[-1]
    if outcome[0] == "ok":
        assert terminal["status"] == "completed"
    else:
        assert terminal["status"] == "failed"
        assert terminal["error"] == f"{outcome[1].__name__}: {outcome[2]}"[:2000]


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(programs)
def test_tracing_never_changes_the_outcome(ops: list[Any]) -> None:
    expected = outcome_of(lambda: untraced(ops))
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = Path(tmp)
        assert outcome_of(lambda: observed(ops, trace_dir)) == expected
        check_terminal(trace_dir / "prop-observer" / "trace.jsonl", expected)
        assert outcome_of(lambda: via_run_workflow(ops, trace_dir)) == expected
        check_terminal(trace_dir / "prop-run" / "trace.jsonl", expected)


def test_the_generator_reaches_both_outcomes() -> None:
    # The property means little unless generated programs both return and raise.
    assert outcome_of(lambda: untraced([("put", "a", 2), ("get", "a")])) == (
        "ok",
        ((2,), 2, None),
    )
    raised = outcome_of(lambda: untraced([("call", [("raise", "KeyError", "k")])]))
    assert raised == ("raised", KeyError, "'k'")
    caught = outcome_of(lambda: untraced([("try", [("raise", "ValueError", "v")])]))
    assert caught == ("ok", ((("caught", "v"),), 1, None))
    spawned = outcome_of(lambda: untraced([("spawn", [("put", "b", 3), ("get", "b")])]))
    assert spawned == ("ok", (([((3,), 1, 3)],), 1, 3))
