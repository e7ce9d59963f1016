"""Tracer overhead, measured side by side in one run (ratios, not absolute times).

    python bench/bench_tracer.py [--effects 30000] [--rounds 7]

1. Effect-dense loop (Get/Put under three nested @do calls): traced / untraced, for
   ``trace_observer`` and for ``run_workflow`` against the same handler stack untraced.
2. A workflow whose effects each block 1 ms: traced / untraced.
3. Latency: how long after an effect starts its record is readable by another reader,
   while the effect blocks.
4. Trace size: bytes per effect at a three-frame stack.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doeff
from doeff import Get, Put, do
from doeff.program import handler
from doeff_core_effects import reader, slog_discard_handler, state
from doeff_core_effects.scheduler import scheduled

from doeff_flow_core import read_latest, run_workflow, trace_file, trace_observer


@do
def leaf(i: int) -> Any:
    x = yield Get("x")
    yield Put("x", x + i)
    return x


@do
def middle(n: int) -> Any:
    for i in range(n):
        yield leaf(i)
    return n


@do
def top(rounds: int, n: int) -> Any:
    for _ in range(rounds):
        yield middle(n)
    return (yield Get("x"))


def dense(effects: int) -> Any:
    per = 100
    return top(effects // (2 * per), per)


def run_untraced(effects: int) -> float:
    program = state({"x": 0})(dense(effects))
    start = time.perf_counter()
    doeff.run(program)
    return time.perf_counter() - start


@do
def stack_only(effect: Any, k: Any) -> Any:
    yield doeff.GetTraceback(k)
    return (yield doeff.Pass(effect, k))


def run_hooks_only(effects: int) -> float:
    """doeff's hooks alone, recording nothing: the floor any tracer of stacks pays."""
    program = state({"x": 0})(doeff.WithObserve([].append, handler(stack_only)(dense(effects))))
    start = time.perf_counter()
    doeff.run(program)
    return time.perf_counter() - start


def run_observed(effects: int, trace_dir: Path) -> float:
    trace_file(trace_dir, "bench-dense").unlink(missing_ok=True)
    start = time.perf_counter()
    with trace_observer("bench-dense", trace_dir) as observe:
        doeff.run(state({"x": 0})(observe(dense(effects))))
    return time.perf_counter() - start


def run_stack_untraced(effects: int) -> float:
    program = scheduled(reader({})(state({"x": 0})(slog_discard_handler(dense(effects)))))
    start = time.perf_counter()
    doeff.run(program)
    return time.perf_counter() - start


def run_workflow_traced(effects: int, trace_dir: Path) -> float:
    trace_file(trace_dir, "bench-wf").unlink(missing_ok=True)
    start = time.perf_counter()
    run_workflow(dense(effects), "bench-wf", trace_dir, store={"x": 0})
    return time.perf_counter() - start


@do
def sleeper(effect: Any, k: Any) -> Any:
    if isinstance(effect, Get):
        time.sleep(0.001)
    return (yield doeff.Pass(effect, k))


@do
def blocking(n: int) -> Any:
    for _ in range(n):
        yield leaf(1)
    return n


def run_blocking(n: int, trace_dir: Path | None) -> float:
    start = time.perf_counter()
    if trace_dir is None:
        doeff.run(state({"x": 0})(handler(sleeper)(blocking(n))))
    else:
        with trace_observer("bench-blocking", trace_dir) as observe:
            doeff.run(state({"x": 0})(handler(sleeper)(observe(blocking(n)))))
    return time.perf_counter() - start


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
    with trace_observer(workflow_id, trace_dir) as observe:
        doeff.run(
            state({"x": 0})(handler(slow_effect)(doeff.WithObserve(note, observe(one_slow()))))
        )
    reader_thread.join(timeout=5)
    return seen[0] - started[0] if seen and started else float("nan")


def best_ratio(
    traced: Callable[[], float], untraced: Callable[[], float], rounds: int
) -> tuple[float, float, float]:
    """Alternate the two, take the best of each (noise only ever adds time)."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        b.append(untraced())
        a.append(traced())
    return min(a) / min(b), min(a), min(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="doeff-flow-bench-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_STATE_HOME", str(root / "state"))
        n = args.effects
        ratio, traced, plain = best_ratio(
            lambda: run_observed(n, root), lambda: run_untraced(n), args.rounds
        )
        print(
            f"dense loop, trace_observer: {ratio:.2f}x  "
            f"(traced {traced / n * 1e6:.2f} us/effect, untraced {plain / n * 1e6:.2f})"
        )
        floor, _, _ = best_ratio(lambda: run_hooks_only(n), lambda: run_untraced(n), args.rounds)
        print(f"  of which doeff's hooks:   {floor:.2f}x  (WithObserve + handler + GetTraceback)")
        ratio, traced, plain = best_ratio(
            lambda: run_workflow_traced(n, root), lambda: run_stack_untraced(n), args.rounds
        )
        print(
            f"dense loop, run_workflow:   {ratio:.2f}x  "
            f"(traced {traced / n * 1e6:.2f} us/effect, untraced {plain / n * 1e6:.2f})"
        )
        ratio, traced, plain = best_ratio(
            lambda: run_blocking(200, root), lambda: run_blocking(200, None), 3
        )
        print(f"1 ms effects:               {ratio:.3f}x  (400 effects, 200 of them sleeping)")
        samples = [latency_once(root, i) for i in range(10)]
        print(
            f"record readable after:      median {statistics.median(samples) * 1e3:.1f} ms, "
            f"max {max(samples) * 1e3:.1f} ms (effect blocking 300 ms, 10 runs)"
        )
        path = trace_file(root, "bench-dense")
        size = path.stat().st_size
        lines = sum(1 for _ in path.open("rb"))
        print(f"trace size:                 {size / lines:.0f} bytes/effect (3-frame stack)")


if __name__ == "__main__":
    main()
