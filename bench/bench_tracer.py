"""Tracer overhead, measured side by side in one run (ratios, not absolute times).

    python bench/bench_tracer.py [--effects 30000] [--rounds 7] [--quick]

Every ratio is ``run_workflow`` against plain ``doeff.run`` of the same program under the
same handlers (``standard_handlers`` inside the scheduler); traced and untraced runs
alternate, and the best of each is kept (noise only ever adds time). On Python 3.12+
the exact tracer is measured, and beside it the fallback tracer that 3.11 uses
(``DOEFF_FLOW_TRACER=hooks``), in the same run.

1. Effect-dense loop (Get/Put in a leaf under a 3-frame stack), and under 8 frames.
2. The same loop with 100 plain Python calls between effects.
3. A workflow whose effects each block 1 ms.
4. Latency: how long after an effect starts its record is readable by another reader,
   while the effect blocks.
5. Trace size: bytes per effect at a three-frame stack, with call ids and arguments.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doeff
from doeff import Get, Put, do
from doeff.program import handler
from doeff_core_effects.scheduler import scheduled

from doeff_flow_core import read_latest, run_workflow, trace_file
from doeff_flow_core.workflow import standard_handlers

EXACT = sys.version_info >= (3, 12)


@do
def leaf(i: int) -> Any:
    x = yield Get("x")
    yield Put("x", x + i)
    return x


def plain(i: int) -> int:
    return i + 1


@do
def busy_leaf(i: int) -> Any:
    for _ in range(100):  # 100 plain calls before each of the two effects
        plain(i)
        plain(i)
    x = yield Get("x")
    yield Put("x", x + i)
    return x


@do
def middle(n: int, depth: int, body: Any) -> Any:
    """``depth`` frames from here down to the leaf: pass-through calls, then the loop."""
    if depth > 2:
        return (yield middle(n, depth - 1, body))
    for i in range(n):
        yield body(i)
    return n


@do
def top(rounds: int, n: int, depth: int, body: Any) -> Any:
    for _ in range(rounds):
        yield middle(n, depth - 1, body)
    return (yield Get("x"))


def dense(effects: int, depth: int = 3, body: Any = leaf) -> Any:
    per = 100
    return top(effects // (2 * per), per, depth, body)


def untraced(program: Any, store: dict[str, Any], extra: tuple[Any, ...] = ()) -> float:
    stack = [*standard_handlers(store=store), *extra]
    start = time.perf_counter()
    doeff.run(scheduled(doeff.with_handlers(stack, program)))
    return time.perf_counter() - start


def traced(
    program: Any, root: Path, name: str, store: dict[str, Any], extra: tuple[Any, ...] = ()
) -> float:
    trace_file(root, name).unlink(missing_ok=True)
    start = time.perf_counter()
    result = run_workflow(program, name, root, store=store, handlers=extra)
    elapsed = time.perf_counter() - start
    assert result.error is None, result.error
    return elapsed


def with_tracer(kind: str | None, run: Callable[[], float]) -> float:
    """``run`` with ``DOEFF_FLOW_TRACER`` set to ``kind`` (None: unset)."""
    before = os.environ.pop("DOEFF_FLOW_TRACER", None)
    if kind is not None:
        os.environ["DOEFF_FLOW_TRACER"] = kind
    try:
        return run()
    finally:
        os.environ.pop("DOEFF_FLOW_TRACER", None)
        if before is not None:
            os.environ["DOEFF_FLOW_TRACER"] = before


def ratios(
    make: Callable[[], Any], root: Path, name: str, rounds: int, extra: tuple[Any, ...] = ()
) -> tuple[float, float | None, float]:
    """(traced / untraced, fallback tracer / untraced on 3.12+, untraced seconds)."""
    plain_times: list[float] = []
    exact_times: list[float] = []
    hook_times: list[float] = []
    for _ in range(rounds):
        plain_times.append(untraced(make(), {"x": 0}, extra))
        exact_times.append(with_tracer(None, lambda: traced(make(), root, name, {"x": 0}, extra)))
        if EXACT:
            hook_times.append(
                with_tracer("hooks", lambda: traced(make(), root, name, {"x": 0}, extra))
            )
    best = min(plain_times)
    hooks = min(hook_times) / best if hook_times else None
    return min(exact_times) / best, hooks, best


@do
def sleeper(effect: Any, k: Any) -> Any:
    if isinstance(effect, Get):
        time.sleep(0.001)
    return (yield doeff.Pass(effect, k))


@do
def slow_effect(effect: Any, k: Any) -> Any:
    if isinstance(effect, Get) and effect.key == "slow":
        time.sleep(0.3)
        return (yield doeff.Resume(k, 0))
    return (yield doeff.Pass(effect, k))


@do
def one_slow() -> Any:
    yield Get("x")
    yield Get("slow")
    return 1


def latency_once(trace_dir: Path, index: int) -> float:
    """Seconds from the slow effect starting until a reader sees its record."""
    workflow_id = f"bench-latency-{index}"
    path = trace_file(trace_dir, workflow_id)
    seen: list[float] = []
    started: list[float] = []

    def watch() -> None:
        while not seen:
            try:
                record = read_latest(path)
            except FileNotFoundError:
                record = None
            if record is not None and record.current_effect == "Get('slow')":
                seen.append(time.perf_counter())
                return
            time.sleep(0.0005)

    def note(effect: object) -> None:
        if getattr(effect, "key", None) == "slow":
            started.append(time.perf_counter())

    reader_thread = threading.Thread(target=watch)
    reader_thread.start()
    run_workflow(
        doeff.WithObserve(note, one_slow()),
        workflow_id,
        trace_dir,
        store={"x": 0},
        handlers=[handler(slow_effect)],
    )
    reader_thread.join(timeout=5)
    return seen[0] - started[0] if seen and started else float("nan")


def line(label: str, ratio: float, hooks: float | None, best: float, effects: int) -> None:
    extra = f"  (fallback tracer {hooks:.2f}x)" if hooks is not None else ""
    print(f"{label:<34} {ratio:5.2f}x{extra}  [untraced {best / effects * 1e6:.2f} us/effect]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a fast pass (CI)")
    args = parser.parse_args()
    if args.quick:
        args.effects, args.rounds = min(args.effects, 6_000), min(args.rounds, 3)
    n = args.effects
    tracer = "exact (sys.monitoring)" if EXACT else "fallback (doeff hooks)"
    print(f"Python {sys.version.split()[0]}, tracer: {tracer}, {n} effects x {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="doeff-flow-bench-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_STATE_HOME", str(root / "state"))
        line("dense loop, 3 frames:", *ratios(lambda: dense(n), root, "d3", args.rounds), n)
        line("dense loop, 8 frames:", *ratios(lambda: dense(n, 8), root, "d8", args.rounds), n)
        busy = ratios(lambda: dense(n, 3, busy_leaf), root, "busy", args.rounds)
        line("100 plain calls between effects:", *busy, n)
        blocking = 200 if not args.quick else 100  # sleeping effects, as many others
        ratio, hooks, best = ratios(
            lambda: dense(blocking * 2, 3),
            root,
            "blocking",
            3 if not args.quick else 1,
            (handler(sleeper),),
        )
        line("1 ms effects:", ratio, hooks, best, blocking * 2)
        samples = [latency_once(root, i) for i in range(10 if not args.quick else 3)]
        print(
            f"{'record readable after:':<34} median {statistics.median(samples) * 1e3:.1f} ms,"
            f" max {max(samples) * 1e3:.1f} ms (effect blocking 300 ms)"
        )
        path = trace_file(root, "d3")
        size = path.stat().st_size
        lines = sum(1 for _ in path.open("rb"))
        print(f"{'trace size, 3 frames:':<34} {size / lines:.0f} bytes/effect (with call, args)")


if __name__ == "__main__":
    main()
