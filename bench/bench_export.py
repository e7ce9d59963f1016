"""Timeline export and profile speed and memory, measured side by side in one run.

    python bench/bench_export.py [--records 1000000] [--small 100000]
                                 [--formats chrome,otlp,svg,folded,speedscope,profile]

A real doeff workflow (nested calls, spawned tasks, slog) writes a trace of ``--records``
effects and another of ``--small``; ``flowctl export`` turns each into every format (and
``flowctl profile --json`` profiles it: the ``profile`` "format") in a child process whose
peak RSS and wall time are reported. Memory is bounded when the big trace's peak RSS is
about the small one's (the goal: streams in bounded memory).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
FLOWCTL = [sys.executable, "-m", "flowctl", "--socket", "/dev/null/no-flowd.sock"]

# The workflow run in a child process: ``effects`` effects, ten per call, every tenth
# call in a spawned task, a slog line every hundred calls.
WRITER = """
import sys
from doeff import Gather, Get, Put, Spawn, do, slog
from doeff_flow_core import run_workflow

@do
def step(i):
    for _ in range(5):
        n = yield Get("n")
        yield Put("n", n + 1)
    return i

@do
def batch(first, count):
    for i in range(first, first + count):
        if i % 100 == 0:
            yield slog("progress", call=i)
        yield step(i)
    return count

@do
def main(calls):
    done = 0
    while done < calls:
        tasks = []
        for _ in range(9):
            tasks.append((yield Spawn(batch(done, 10))))
            done += 10
        yield batch(done, 10)
        done += 10
        yield Gather(*tasks)
    return done

calls = int(sys.argv[2]) // 10
run_workflow(main(calls), sys.argv[3], sys.argv[1], store={"n": 0},
             max_trace_bytes=1 << 40).unwrap()
"""


def write_trace(trace_dir: Path, workflow_id: str, effects: int) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", WRITER, str(trace_dir), str(effects), workflow_id],
        check=True,
        env=env,
    )
    path = trace_dir / workflow_id / "trace.jsonl"
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return time.perf_counter() - started, lines


PROFILE = "profile"  # not an export format: ``flowctl profile WF --json``, measured alike
DEFAULT_FORMATS = "chrome,otlp,svg,folded,speedscope,profile"


def export(
    trace_dir: Path, workflow_id: str, fmt: str, out: Path
) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS in MB and output bytes of one ``flowctl export``
    (or, for the ``profile`` format, one ``flowctl profile --json``). CPU time is the
    figure to compare when other work shares the machine: wall time then waits for it."""
    script = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "out = open(sys.argv[1], 'w');"
        "subprocess.run(sys.argv[2:], check=True, stdout=out);"
        "print(time.perf_counter() - t,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime"
        " + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime)"
    )
    if fmt == PROFILE:
        what = ["profile", workflow_id, "--json"]
        stdout = str(out)
    else:
        what = ["export", workflow_id, "--format", fmt, "-o", str(out)]
        stdout = os.devnull
    command = [*FLOWCTL, "--trace-dir", str(trace_dir), *what]
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    done = subprocess.run(
        [sys.executable, "-c", script, stdout, *command],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    wall, rss_kib, cpu = done.stdout.split()
    return float(wall), float(cpu), int(rss_kib) / 1024, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--formats", default=DEFAULT_FORMATS)
    args = parser.parse_args()
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        trace_dir = Path(tmp) / "traces"
        sizes = {"small": args.small, "big": args.records}
        lines: dict[str, int] = {}
        for name, effects in sizes.items():
            seconds, lines[name] = write_trace(trace_dir, f"wf-{name}", effects)
            size = (trace_dir / f"wf-{name}" / "trace.jsonl").stat().st_size
            print(
                f"trace {name}: {lines[name]:,} records, {size / 2**20:,.0f} MiB,"
                f" written in {seconds:.1f} s"
            )
        print()
        print(
            f"{'format':<10} {'records':>10} {'wall s':>8} {'rec/s':>10} {'CPU s':>7}"
            f" {'rec/CPU s':>10} {'peak RSS MB':>12} {'output MB':>10}"
        )
        peaks: dict[str, dict[str, float]] = {}
        for fmt in formats:
            for name in sizes:  # side by side: small then big, per format
                out = Path(tmp) / f"{name}.{fmt}"
                wall, cpu, rss, size = export(trace_dir, f"wf-{name}", fmt, out)
                peaks.setdefault(fmt, {})[name] = rss
                print(
                    f"{fmt:<10} {lines[name]:>10,} {wall:>8.1f} {lines[name] / wall:>10,.0f}"
                    f" {cpu:>7.1f} {lines[name] / cpu:>10,.0f}"
                    f" {rss:>12.1f} {size / 2**20:>10.1f}"
                )
                out.unlink()
        print()
        for fmt, peak in peaks.items():
            print(
                f"{fmt}: peak RSS {peak['big']:.1f} MB for {lines['big']:,} records vs"
                f" {peak['small']:.1f} MB for {lines['small']:,}"
                f" ({peak['big'] / peak['small']:.2f}x)"
            )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this script: {own:.0f} MB)")


if __name__ == "__main__":
    main()
