"""The exact tracer (Python 3.12+): its stacks against doeff's own GetTraceback, the
effects the fallback tracer loses, call identity and arguments, and its hooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import doeff
import pytest
from doeff import (
    Ask,
    EffectBase,
    Gather,
    GetTraceback,
    Listen,
    Local,
    Pass,
    Resume,
    Spawn,
    Tell,
    Try,
    Wait,
    WithObserve,
    do,
    handler,
    slog,
    with_handlers,
)
from doeff import Get as GetEffect
from doeff import Put as PutEffect
from doeff_core_effects import scheduled, slog_discard_handler, state
from doeff_core_effects.handlers import try_handler
from doeff_core_effects.scheduler import CompletePromise, CreatePromise
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doeff_flow_core import run_workflow, trace_observer
from tests.support.traces import line_of, read_jsonl

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="the exact tracer needs sys.monitoring (3.12+)"
)

HERE = os.path.abspath(__file__)
Frame = tuple[str, str, int]


def frames(record: dict[str, Any]) -> list[Frame]:
    return [(f["function"], f["file"], f["line"]) for f in record["trace"]]


def running(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["status"] == "running"]


# -- generated programs against GetTraceback ----------------------------------------------

# A plan is a list of steps; a step is ("get" | "tell" | "slog" | "gen", None) or
# ("call" | "try" | "local" | "listen" | "spawn", plan).
leaf_step = st.sampled_from([("get", None), ("tell", None), ("slog", None), ("gen", None)])
plans = st.recursive(
    st.lists(leaf_step, min_size=1, max_size=3),
    lambda inner: st.lists(
        st.one_of(
            leaf_step,
            st.tuples(st.sampled_from(["call", "try", "local", "listen", "spawn"]), inner),
        ),
        min_size=1,
        max_size=4,
    ),
    max_leaves=14,
)


@do
def node_a(plan: list[tuple[str, Any]]) -> Any:
    return (yield walk(plan, node_b))


@do
def node_b(plan: list[tuple[str, Any]]) -> Any:
    return (yield walk(plan, node_a))


@do
def walk(plan: list[tuple[str, Any]], other: Any) -> Any:
    count = 0
    for action, sub in plan:
        if action == "get":
            count += yield GetEffect("x")
        elif action == "tell":
            yield Tell(count)
        elif action == "slog":
            yield slog("step", count=count)
        elif action == "gen":  # a generator that is not a @do body, inside one
            count += sum(i for i in range(3))
        elif action == "call":
            yield other(sub)
        elif action == "try":
            yield Try(other(sub))
        elif action == "local":
            yield Local({"k": 1}, other(sub))
        elif action == "listen":
            yield Listen(other(sub))
        elif action == "spawn":
            yield Wait((yield Spawn(other(sub))))
    return count


SHOWN_AS = {"WriterTellEffect": "Tell", "SlogEffect": "slog"}  # their reprs' names


def traceback_frames(frames_innermost_first: list[list[Any]]) -> list[Frame]:
    return [(f[0], f[1], f[2]) for f in reversed(frames_innermost_first)]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_stacks_agree_with_get_traceback(tmp_path_factory: Any, plan: Any) -> None:
    """Each effect's stack ends with what GetTraceback gives for it, and is longer only
    across a Try/Local/Listen boundary (where GetTraceback stops); the records hold every
    effect WithObserve sees."""
    seen: list[tuple[str, list[Frame]]] = []
    observed: list[str] = []

    @do
    def stack_of(effect: Any, k: Any) -> Any:
        seen.append((type(effect).__name__, traceback_frames((yield GetTraceback(k)))))
        return (yield Pass(effect, k))

    program = WithObserve(
        lambda effect: observed.append(type(effect).__name__),
        handler(stack_of)(node_a(plan)),
    )
    trace_dir = tmp_path_factory.mktemp("conform")
    result = run_workflow(program, "conform", trace_dir, store={"x": 1})
    assert result.error is None, result.error
    records = running(read_jsonl(result.trace_path))
    assert [r["current_effect"].split("(")[0] for r in records] == [
        SHOWN_AS.get(name, name) for name, _ in seen
    ]
    for record, (_name, expected) in zip(records, seen, strict=True):
        assert record["trace_exact"] is True
        ours = frames(record)
        assert ours[len(ours) - len(expected) :] == expected, (ours, expected)
        if len(ours) > len(expected):
            # Extended outward only where a program runs inside the effect carrying it.
            boundary = record_effect_at(records, record, len(ours) - len(expected) - 1)
            assert boundary is not None
    names = {r["current_effect"].split("(")[0] for r in records}
    assert {SHOWN_AS.get(name, name) for name in observed} <= names


def record_effect_at(
    records: list[dict[str, Any]], record: dict[str, Any], depth: int
) -> dict[str, Any] | None:
    """The earlier record performed by the frame at ``depth`` of ``record``'s stack, at
    the same line, whose effect carries a program run in place."""
    frame = record["trace"][depth]
    for earlier in records:
        if earlier is record:
            break
        top = earlier["trace"][-1] if earlier["trace"] else None
        if (
            top is not None
            and top.get("call") == frame.get("call")
            and top["line"] == frame["line"]
            and earlier["current_effect"].split("(")[0] in ("Try", "Local", "Listen")
        ):
            return earlier
    return None


# -- what the fallback tracer loses ------------------------------------------------------


@do
def risky() -> Any:
    x = yield GetEffect("x")
    yield PutEffect("x", 5)
    raise ValueError(f"boom {x}")


@do
def tries() -> Any:
    r = yield Try(risky())
    return r.is_err()


def test_effects_inside_try_with_try_handler_outside_observe(tmp_path: Path) -> None:
    with trace_observer("wf", tmp_path) as observe:
        value = doeff.run(scheduled(try_handler(state({"x": 0})(observe(tries())))))
    assert value is True
    records = running(read_jsonl(tmp_path / "wf" / "trace.jsonl"))
    caller = ("tries", HERE, line_of(tries, "yield Try(risky())"))
    assert [(r["current_effect"], frames(r)) for r in records] == [
        ("Try(program=risky())", [caller]),
        ("Get('x')", [caller, ("risky", HERE, line_of(risky, "yield GetEffect"))]),
        ("Put('x', 5)", [caller, ("risky", HERE, line_of(risky, "yield PutEffect"))]),
    ]
    assert all(r["trace_exact"] for r in records)


class Ping(EffectBase):  # type: ignore[misc]
    def __init__(self, x: int) -> None:
        super().__init__()
        self.x = x

    def __repr__(self) -> str:
        return f"Ping({self.x})"


@do
def answer_ping(effect: Ping, k: Any) -> Any:
    seen = yield GetEffect("x")  # a handler body's own effect
    return (yield Resume(k, effect.x + seen))


@do
def pinger() -> Any:
    a = yield Ping(1)
    return a


@do
def installs_handler() -> Any:
    yield GetEffect("x")
    return (yield handler(answer_ping)(pinger()))


def test_effects_answered_by_an_inner_handler_have_their_own_stack(tmp_path: Path) -> None:
    result = run_workflow(installs_handler(), "wf", tmp_path, store={"x": 10})
    assert result.value == 11
    records = running(read_jsonl(result.trace_path))
    outer = ("installs_handler", HERE, line_of(installs_handler, "handler(answer_ping)"))
    ping = ("pinger", HERE, line_of(pinger, "yield Ping(1)"))
    body = ("answer_ping", HERE, line_of(answer_ping, "yield GetEffect"))
    assert [(r["current_effect"], frames(r)) for r in records] == [
        ("Get('x')", [("installs_handler", HERE, line_of(installs_handler, "yield GetEffect"))]),
        ("Ping(1)", [outer, ping]),
        # The handler body runs inside the effect it answers.
        ("Get('x')", [outer, ping, body]),
    ]


# -- call identity and arguments ----------------------------------------------------------


@do
def fetch_page(region: str, page: int) -> Any:
    yield slog("fetched", region=region, page=page)
    return page


@do
def fetch_region(region: str, pages: int = 2) -> Any:
    got = []
    for page in range(pages):
        got.append((yield fetch_page(region, page)))
    return got


@do
def report() -> Any:
    tasks = []
    for region in ("emea", "apac", "amer"):
        tasks.append((yield Spawn(fetch_region(region, pages=4))))
    done = []
    for task in tasks:
        done.append((yield Wait(task)))
    return done


def test_each_call_has_its_identity_and_arguments(tmp_path: Path) -> None:
    result = run_workflow(report(), "wf", tmp_path)
    assert result.error is None
    records = running(read_jsonl(result.trace_path))
    fetched = [r for r in records if r["current_effect"].startswith("slog")]
    assert len(fetched) == 12
    calls = {r["trace"][-1]["call"] for r in fetched}
    assert len(calls) == 12  # every fetch_page call told apart
    by_region: dict[str, set[int]] = {}
    for record in fetched:
        region_frame, page_frame = record["trace"]
        assert region_frame["function"] == "fetch_region"
        assert region_frame["args"] == f"region={page_frame['args'].split(',')[0][7:]}, pages=4"
        by_region.setdefault(region_frame["args"], set()).add(region_frame["call"])
    assert sorted(by_region) == [
        "region='amer', pages=4",
        "region='apac', pages=4",
        "region='emea', pages=4",
    ]
    assert all(len(ids) == 1 for ids in by_region.values())  # one call per region
    pages = [r["trace"][-1]["args"] for r in fetched if "apac" in r["trace"][-1]["args"]]
    assert pages == [f"region='apac', page={i}" for i in range(4)]
    assert len({r["task"] for r in fetched}) == 3


@do
def with_key(api_key: str) -> Any:
    return (yield GetEffect("x"))


@pytest.mark.parametrize("how", ["argument", "variable"])
def test_arguments_can_be_left_out(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "variable":
        monkeypatch.setenv("DOEFF_FLOW_ARGS", "0")
        result = run_workflow(with_key("sk-secret"), "wf", tmp_path, store={"x": 1})
    else:
        result = run_workflow(
            with_key("sk-secret"), "wf", tmp_path, store={"x": 1}, capture_args=False
        )
    assert result.value == 1
    assert "sk-secret" not in result.trace_path.read_text()
    [record] = running(read_jsonl(result.trace_path))
    assert [set(f) for f in record["trace"]] == [{"function", "file", "line", "code", "call"}]


class Explodes:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Opaque:
    pass


@do
def takes(value: Any, *rest: Any, **named: Any) -> Any:
    yield GetEffect("x")
    return 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Explodes(), "value=<unrepresentable>"),
        (b"\x00" * 10_000_000, None),
        ({str(i): i for i in range(300_000)}, None),
        (set(range(300_000)), None),
        (Opaque(), "value=Opaque"),
        ("x" * 10_000, None),
        (list(range(100_000)), None),
        ({"k": "v" * 1000}, None),
    ],
    ids=[
        "raises",
        "huge-bytes",
        "huge-dict",
        "huge-set",
        "default-repr",
        "huge-str",
        "huge-list",
        "big-dict",
    ],
)
def test_arguments_are_bounded_and_never_fail(
    tmp_path: Path, value: object, expected: str | None
) -> None:
    result = run_workflow(takes(value, 1, 2, flag=True), "wf", tmp_path, store={"x": 1})
    assert result.value == 1
    [record] = running(read_jsonl(result.trace_path))
    args = record["trace"][-1]["args"]
    assert len(args) <= 120
    assert " at 0x" not in args
    if expected is not None:
        assert args == f"{expected}, 1, 2, flag=True"


# -- hooks: released, shared, and never in the way ----------------------------------------


def monitoring_events() -> dict[int, int]:
    return {tool: sys.monitoring.get_events(tool) for tool in range(6)}


@do
def fails_early() -> Any:
    yield GetEffect("x")
    raise KeyError("gone")


def test_hooks_are_released_when_a_run_ends_even_by_an_exception(tmp_path: Path) -> None:
    result = run_workflow(fails_early(), "wf", tmp_path, store={"x": 1})
    assert isinstance(result.error, KeyError)
    assert set(monitoring_events().values()) == {0}
    with pytest.raises(KeyError), trace_observer("wf2", tmp_path) as observe:
        doeff.run(state({"x": 1})(observe(fails_early())))
    assert set(monitoring_events().values()) == {0}


def test_two_threads_trace_two_runs_at_once(tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    @do
    def paced(name: str, n: int) -> Any:
        total = 0
        for i in range(n):
            if i == 5:
                barrier.wait(timeout=10)  # both runs are live at once from here
            total += yield fetch_page(name, i)
        return total

    def run(name: str) -> None:
        results[name] = run_workflow(paced(name, 300), name, tmp_path)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for name in ("left", "right"):
        assert results[name].value == sum(range(300))
        records = running(read_jsonl(results[name].trace_path))
        assert len(records) == 300
        for i, record in enumerate(records):
            outer, inner = record["trace"]
            assert outer["args"] == f"name='{name}', n=300"
            assert inner["args"] == f"region='{name}', page={i}"
    assert set(monitoring_events().values()) == {0}


def run_script(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``source`` in a fresh interpreter, given ``tmp_path`` as its trace directory."""
    return subprocess.run(
        [sys.executable, "-c", source, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )


OTHER_TOOLS = """
import sys
from pathlib import Path
for tool in range(6):
    sys.monitoring.use_tool_id(tool, f"other-{tool}")
from doeff import Get, do
from doeff_flow_core import run_workflow

@do
def wf():
    return (yield Get("x"))

result = run_workflow(wf(), "wf", Path(sys.argv[1]), store={"x": 7})
print(result.value, [sys.monitoring.get_tool(t) for t in range(6)])
"""


def test_another_tool_holding_every_id_is_not_displaced(tmp_path: Path) -> None:
    done = run_script(OTHER_TOOLS, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "7"
    assert "other-5" in done.stdout and "doeff-flow" not in done.stdout
    assert done.stderr.count("\n") == 1 and "sys.monitoring" in done.stderr
    records = read_jsonl(tmp_path / "wf" / "trace.jsonl")
    assert [r["current_effect"] for r in records] == ["Get('x')", None]


# -- hard shapes ----------------------------------------------------------------------------


@do
def deep(n: int) -> Any:
    if n == 0:
        return (yield GetEffect("x"))
    return (yield deep(n - 1))


def test_recursion_500_deep_keeps_the_whole_chain(tmp_path: Path) -> None:
    result = run_workflow(deep(500), "wf", tmp_path, store={"x": 3})
    assert result.value == 3
    [record] = running(read_jsonl(result.trace_path))
    assert [f["args"] for f in record["trace"]] == [f"n={n}" for n in range(500, -1, -1)]
    assert len({f["call"] for f in record["trace"]}) == 501


@do
def tiny(i: int) -> Any:
    return (yield GetEffect("x")) + i


@do
def many_tasks(n: int) -> Any:
    tasks = []
    for i in range(n):
        tasks.append((yield Spawn(tiny(i))))
    total = 0
    for task in tasks:
        total += yield Wait(task)
    return total


def test_ten_thousand_live_tasks(tmp_path: Path) -> None:
    result = run_workflow(many_tasks(10_000), "wf", tmp_path, store={"x": 1})
    assert result.value == sum(range(10_000)) + 10_000
    records = running(read_jsonl(result.trace_path))
    gets = [r for r in records if r["current_effect"] == "Get('x')"]
    assert len(gets) == 10_000
    assert all(frames(r) == [("tiny", HERE, line_of(tiny, "yield GetEffect"))] for r in gets)
    assert len({r["task"] for r in gets}) == 10_000


@do
def raising_handler(effect: Ping, k: Any) -> Any:
    yield GetEffect("x")
    raise RuntimeError("handler broke")


@do
def uses_raising_handler() -> Any:
    r = yield Try(handler(raising_handler)(pinger()))
    after = yield GetEffect("x")
    return (r.is_err(), after)


def test_a_handler_that_raises_leaves_the_stacks_exact(tmp_path: Path) -> None:
    result = run_workflow(uses_raising_handler(), "wf", tmp_path, store={"x": 4})
    assert result.value == (True, 4)
    records = running(read_jsonl(result.trace_path))
    assert frames(records[-1]) == [
        ("uses_raising_handler", HERE, line_of(uses_raising_handler, "after = yield"))
    ]


INTERRUPTED = """
import sys, signal, os
from pathlib import Path
from doeff import Get, do
from doeff_flow_core import run_workflow

@do
def loop():
    i = 0
    while True:
        i += yield Get("x")
        if i == 1000:
            os.kill(os.getpid(), signal.SIGINT)

try:
    run_workflow(loop(), "wf", Path(sys.argv[1]), store={"x": 1})
except KeyboardInterrupt:
    print("interrupted", [sys.monitoring.get_events(t) for t in range(6)])
"""


def test_keyboard_interrupt_is_recorded_and_releases_the_hooks(tmp_path: Path) -> None:
    done = run_script(INTERRUPTED, tmp_path)
    assert done.stdout.strip() == "interrupted [0, 0, 0, 0, 0, 0]", done.stderr
    records = read_jsonl(tmp_path / "wf" / "trace.jsonl")
    assert records[-1]["status"] == "failed"
    assert "KeyboardInterrupt" in records[-1]["error"]
    assert len(records) > 1000


def test_ask_and_a_local_program_are_traced_in_place(tmp_path: Path) -> None:
    @do
    def reads() -> Any:
        return (yield Ask("k"))

    @do
    def scoped() -> Any:
        return (yield Local({"k": 2}, reads()))

    result = run_workflow(scoped(), "wf", tmp_path, env={"k": 1})
    assert result.value == 2
    records = running(read_jsonl(result.trace_path))
    # Named as GetTraceback names them: by qualified name.
    scoped_name = scoped.__qualname__
    assert [[f["function"] for f in r["trace"]] for r in records] == [
        [scoped_name],
        [scoped_name, reads.__qualname__],
    ]
    assert reads.__qualname__.endswith("<locals>.reads")


def test_a_generator_in_a_body_is_not_a_frame(tmp_path: Path) -> None:
    program = textwrap.dedent("""
        from doeff import Get, do
        @do
        def body():
            total = sum(x for x in range(5))
            values = list(gen())
            return (yield Get("x")) + total + len(values)
        def gen():
            yield 1
            yield 2
    """)
    namespace: dict[str, Any] = {}
    exec(compile(program, str(tmp_path / "prog.py"), "exec"), namespace)
    result = run_workflow(namespace["body"](), "wf", tmp_path, store={"x": 1})
    assert result.value == 13
    [record] = running(read_jsonl(result.trace_path))
    assert [f["function"] for f in record["trace"]] == ["body"]  # not "<genexpr>", not "gen"


def test_an_outer_observe_handler_stack_still_sees_effects(tmp_path: Path) -> None:
    """A workflow run by trace_observer under handlers of the caller's own."""
    with trace_observer("wf", tmp_path) as observe:
        value = doeff.run(
            scheduled(with_handlers([state({"x": 2}), slog_discard_handler], observe(tiny(1))))
        )
    assert value == 3
    [record] = running(read_jsonl(tmp_path / "wf" / "trace.jsonl"))
    assert record["current_effect"] == "Get('x')"
    assert record["trace"][0]["args"] == "i=1"


@do
def parked(promise: Any) -> Any:
    yield GetEffect("x")
    opened = yield Wait(promise.future)  # a live call for as long as the gate is shut
    yield PutEffect("woken", opened)  # yields again once the gate opens
    return opened


@do
def waits_through_crowd(n: int) -> Any:
    yield GetEffect("x")
    gate = yield CreatePromise()
    tasks = []
    for _ in range(n):
        tasks.append((yield Spawn(parked(gate))))
    yield CompletePromise(gate, 1)
    done = yield Gather(*tasks)
    after = yield GetEffect("x")
    return sum(done) + after


def test_the_table_of_live_calls_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cap, calls that did not yield lately are forgotten; one that yields
    again is followed on with its callers unknown, never dropped. (Calls that raise
    leave no entry behind: their frames' unwinding ends them.)"""
    from doeff_flow_core.tracing import monitor, shadow

    monkeypatch.setattr(monitor, "MAX_LIVE_CALLS", 50)
    monkeypatch.setattr(shadow, "MAX_LIVE_CALLS", 50)
    sizes: list[int] = []
    original = shadow.Context.forget_idle

    def forget_idle(self: shadow.Context) -> None:
        original(self)
        sizes.append(len(self.calls))

    monkeypatch.setattr(shadow.Context, "forget_idle", forget_idle)
    result = run_workflow(waits_through_crowd(300), "wf", tmp_path, store={"x": 1})
    assert result.value == 301
    assert sizes and max(sizes) <= 45
    records = running(read_jsonl(result.trace_path))
    woken = [r for r in records if r["current_effect"].startswith("Put('woken'")]
    assert len(woken) == 300  # every parked call's next effect is recorded, none dropped
    assert all(frames(r)[-1][0] == "parked" for r in woken)
    # Those forgotten while parked are followed on, their callers unknown.
    assert any(r["trace_exact"] is False for r in woken)


# -- a traced run's scope: its own tasks, its own VM ----------------------------------------


@do
def job(name: str, mine: Any, other: Any) -> Any:
    yield PutEffect(name, 0)
    yield CompletePromise(other, 1)
    yield Wait(mine.future)
    yield PutEffect(name, 1)
    return name


def test_two_observed_programs_on_one_thread_keep_to_their_own_tasks(tmp_path: Path) -> None:
    with trace_observer("wf-a", tmp_path) as observe_a, trace_observer("wf-b", tmp_path) as b:

        @do
        def app() -> Any:
            pa = yield CreatePromise()
            pb = yield CreatePromise()
            first = yield Spawn(observe_a(job("a", pa, pb)))
            second = yield Spawn(b(job("b", pb, pa)))
            noise = yield Spawn(tiny(-1))  # a task nobody traces
            return (yield Wait(first)), (yield Wait(second)), (yield Wait(noise)) + 1

        assert doeff.run(scheduled(state({"x": 0})(app()))) == ("a", "b", 0)
    for name in ("a", "b"):
        records = running(read_jsonl(tmp_path / f"wf-{name}" / "trace.jsonl"))
        effects = [r["current_effect"] for r in records]
        assert effects[0] == f"Put('{name}', 0)" and effects[-1] == f"Put('{name}', 1)"
        assert all(
            [f["function"] for f in r["trace"]] == ["job"]
            and r["trace"][0]["args"].startswith(f"name='{name}'")
            for r in records
        )
        assert len({r["task"] for r in records}) == 1


@do
def private_lookup() -> Any:
    return (yield GetEffect("cfg"))


@do
def runs_its_own_vm() -> Any:
    a = yield GetEffect("x")
    cfg = doeff.run(state({"cfg": 42})(private_lookup()))  # another VM, untraced
    b = yield GetEffect("x")
    return a + cfg + b


def test_a_private_run_inside_a_body_is_not_in_the_trace(tmp_path: Path) -> None:
    result = run_workflow(runs_its_own_vm(), "wf", tmp_path, store={"x": 1})
    assert result.value == 44
    records = running(read_jsonl(result.trace_path))
    assert [(r["current_effect"], frames(r)) for r in records] == [
        ("Get('x')", [("runs_its_own_vm", HERE, line_of(runs_its_own_vm, "a = yield"))]),
        ("Get('x')", [("runs_its_own_vm", HERE, line_of(runs_its_own_vm, "b = yield"))]),
    ]


@do
def step_of(n: int) -> Any:
    v = yield GetEffect("x")
    yield PutEffect("x", v + n)
    return v


@do
def drives_a_body_itself() -> Any:
    yield step_of(1)
    yield from step_of.__wrapped__(2)  # the body's generator, driven by this frame
    return (yield GetEffect("x"))


def test_a_body_driven_by_python_code_is_not_a_call(tmp_path: Path) -> None:
    result = run_workflow(drives_a_body_itself(), "wf", tmp_path, store={"x": 1})
    assert result.value == 4
    records = running(read_jsonl(result.trace_path))
    line = line_of(drives_a_body_itself, "yield from")
    assert [frames(r)[-1][0] for r in records] == [
        "step_of",
        "step_of",
        *["drives_a_body_itself"] * 3,
    ]
    assert [frames(r)[-1][2] for r in records[2:4]] == [line, line]


@do(non_tail=True)
def resumes_then_works(effect: Ping, k: Any) -> Any:
    value = yield Resume(k, effect.x)
    yield PutEffect("after", value)  # the call it answered has returned by now
    return value


@do
def handled_twice() -> Any:
    return (yield handler(resumes_then_works)(pinger()))


def test_a_handler_body_that_outlives_its_caller_shows_the_live_callers(tmp_path: Path) -> None:
    result = run_workflow(handled_twice(), "wf", tmp_path)
    assert result.value == 1
    records = running(read_jsonl(result.trace_path))
    outer = ("handled_twice", HERE, line_of(handled_twice, "handler(resumes_then_works)"))
    assert [(r["current_effect"], frames(r)) for r in records] == [
        ("Ping(1)", [outer, ("pinger", HERE, line_of(pinger, "yield Ping(1)"))]),
        (
            "Put('after', 1)",
            [outer, ("resumes_then_works", HERE, line_of(resumes_then_works, '"after"'))],
        ),
    ]


class Unprintable(EffectBase):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.x = 5

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@do
def answers_unprintable(effect: Unprintable, k: Any) -> Any:
    return (yield Resume(k, effect.x))


@do
def performs_unprintable() -> Any:
    return (yield Unprintable())


def test_an_effect_whose_repr_raises_is_recorded_from_its_fields(tmp_path: Path) -> None:
    result = run_workflow(
        performs_unprintable(), "wf", tmp_path, handlers=[handler(answers_unprintable)]
    )
    assert result.value == 5
    [record] = running(read_jsonl(result.trace_path))
    assert record["current_effect"] == "Unprintable(x=5)"


def make_fetcher(region: str) -> Any:
    @do
    def fetch(page: int, region: str = region) -> Any:
        return (yield GetEffect("x"))

    return fetch


def test_defaults_belong_to_the_function_not_its_code(tmp_path: Path) -> None:
    emea, apac = make_fetcher("emea"), make_fetcher("apac")

    @do
    def both() -> Any:
        return (yield emea(1)) + (yield apac(2))

    result = run_workflow(both(), "wf", tmp_path, store={"x": 1})
    assert result.value == 2
    records = running(read_jsonl(result.trace_path))
    assert [r["trace"][-1]["args"] for r in records] == [
        "page=1, region='emea'",
        "page=2, region='apac'",
    ]


def test_a_project_in_a_directory_named_doeff_is_traced(tmp_path: Path) -> None:
    project = tmp_path / "work" / "doeff"
    project.mkdir(parents=True)
    (project / "etl_flow.py").write_text(
        "from doeff import Get, do\n\n@do\ndef load():\n    return (yield Get('x'))\n"
    )
    sys.path.insert(0, str(project))
    try:
        import etl_flow  # type: ignore[import-not-found]

        result = run_workflow(etl_flow.load(), "wf", tmp_path / "traces", store={"x": 3})
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("etl_flow", None)
    assert result.value == 3
    [record] = running(read_jsonl(result.trace_path))
    assert [f["function"] for f in record["trace"]] == ["load"]


@do
def carries_effects() -> Any:
    a = yield Try(GetEffect("x"))
    b = yield Local({"k": 1}, GetEffect("x"))
    return a.value + b


def test_an_effect_carried_by_try_or_local_is_recorded(tmp_path: Path) -> None:
    result = run_workflow(carries_effects(), "wf", tmp_path, store={"x": 2})
    assert result.value == 4
    records = running(read_jsonl(result.trace_path))
    assert [r["current_effect"].split("(")[0] for r in records] == ["Try", "Get", "Local", "Get"]
    assert frames(records[1]) == frames(records[0])  # performed in place, at once


FREES_OUR_TOOL = """
import sys
from pathlib import Path
from doeff import Get, do
from doeff_flow_core import run_workflow

@do
def frees():
    a = yield Get("x")
    for tool in range(6):
        if sys.monitoring.get_tool(tool) == "doeff-flow":
            sys.monitoring.free_tool_id(tool)
    return a + (yield Get("x"))

@do
def plain():
    return (yield Get("x"))

first = run_workflow(frees(), "a", Path(sys.argv[1]), store={"x": 1})
second = run_workflow(plain(), "b", Path(sys.argv[1]), store={"x": 1})
print(first.value, repr(first.error), second.value, repr(second.error))
print([sys.monitoring.get_events(t) for t in range(6)])
"""


def test_another_tool_freeing_our_id_hurts_no_run(tmp_path: Path) -> None:
    done = run_script(FREES_OUR_TOOL, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2 None 1 None", "[0, 0, 0, 0, 0, 0]"]
    assert [r["current_effect"] for r in read_jsonl(tmp_path / "b" / "trace.jsonl")] == [
        "Get('x')",
        None,
    ]


@do
def inner_workflow() -> Any:
    y = yield GetEffect("y")
    yield PutEffect("y", y + 1)
    return y


@do
def runs_a_traced_workflow(trace_dir: str) -> Any:
    a = yield GetEffect("x")
    inner = run_workflow(inner_workflow(), "inner", trace_dir, store={"y": 100})
    b = yield GetEffect("x")
    return a + b + inner.value


def test_a_traced_run_inside_a_traced_body_has_a_trace_of_its_own(tmp_path: Path) -> None:
    result = run_workflow(runs_a_traced_workflow(str(tmp_path)), "outer", tmp_path, store={"x": 1})
    assert result.value == 102
    outer = running(read_jsonl(result.trace_path))
    inner = running(read_jsonl(tmp_path / "inner" / "trace.jsonl"))
    assert [r["current_effect"] for r in outer] == ["Get('x')", "Get('x')"]
    assert [(r["current_effect"], [f["function"] for f in r["trace"]]) for r in inner] == [
        ("Get('y')", ["inner_workflow"]),
        ("Put('y', 101)", ["inner_workflow"]),
    ]
    assert all(r["trace_exact"] for r in outer + inner)
    assert set(monitoring_events().values()) == {0}
