"""flowctl speed, measured side by side in one run (whole processes, wall and CPU time).

    python bench/bench_flowctl.py [--big-mib 1024] [--workflows 10000] [--idle 5]
                                  [--only history,ps,idle,latency]

1. ``history WF --last 20`` on a 1 GiB trace vs a 1 MiB trace: the ratio (goal <= 1.5x).
2. ``ps`` over 10,000 workflows (goal < 1 s), from the files and through flowd.
3. ``watch WF`` CPU while nothing changes, over ``--idle`` seconds: plain output and the
   full-screen view in a pseudo-terminal (goal < 2% of a core).
4. ``watch WF`` latency from a record landing in the trace to its line being printed
   (plain output; goal < 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from doeff_flow_core.liveness import process_start_ticks

# Files unless a benchmark says otherwise: no daemon answers on this socket.
FLOWCTL = [sys.executable, "-m", "flowctl", "--socket", "/dev/null/no-flowd.sock"]
SECTIONS = ("history", "ps", "idle", "latency")
FRAMES = [
    {"function": "main_workflow", "file": "/srv/app/workflow.py", "line": 100, "code": None},
    {"function": "process_step", "file": "/srv/app/workflow.py", "line": 45, "code": None},
    {"function": "call_api", "file": "/srv/app/api.py", "line": 23, "code": "yield CacheGet(k)"},
]


def record(workflow_id: str, step: int, status: str = "running", **extra: Any) -> str:
    """A record line as the core writes it, at a three-frame stack."""
    data: dict[str, Any] = {
        "workflow_id": workflow_id,
        "step": step,
        "status": status,
        "current_effect": "CacheGet(key='api_result')" if status == "running" else None,
        "trace": FRAMES,
        "started_at": "2026-01-01T12:00:00.000000+00:00",
        "updated_at": "2026-01-01T12:00:01.000000+00:00",
        "error": None,
        "result": "30" if status == "completed" else None,
        "last_slog": {"msg": "fetching", "fields": {"page": "3"}},
        "task": None,
        "pid": None,
        "host": None,
        "run": "0123456789ab",
        "trace_exact": True,
        "pid_start": None,
    }
    data.update(extra)
    return json.dumps(data, separators=(",", ":")) + "\n"


def live_record(workflow_id: str, step: int) -> str:
    """A running record whose writer (this process) is alive: watch keeps checking it."""
    pid = os.getpid()
    return record(
        workflow_id, step, pid=pid, host=socket.gethostname(), pid_start=process_start_ticks(pid)
    )


def write_trace(trace_dir: Path, workflow_id: str, size: int) -> Path:
    """``size`` bytes of records (one representative line repeated), ending completed."""
    path = trace_dir / workflow_id / "trace.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record(workflow_id, 1).encode()
    block = line * max(1, (1 << 20) // len(line))
    with path.open("wb") as handle:
        written = 0
        while written + len(block) <= size:
            handle.write(block)
            written += len(block)
        handle.write(line * max(0, (size - written) // len(line)))
        handle.write(record(workflow_id, 2, "completed").encode())
    return path


def timed(args: list[object], rounds: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of ``flowctl ARGS``, output discarded."""
    walls, cpus = [], []
    for _ in range(rounds):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(
            [*FLOWCTL, *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append(
            after.children_user
            + after.children_system
            - before.children_user
            - before.children_system
        )
    return statistics.median(walls), statistics.median(cpus)


def bench_history(base: Path, big_mib: int, rounds: int) -> None:
    small_dir, big_dir = base / "small", base / "big"
    write_trace(small_dir, "wf-small", 1 << 20)
    started = time.perf_counter()
    big = write_trace(big_dir, "wf-big", big_mib << 20)
    made = time.perf_counter() - started
    try:
        small_wall, small_cpu = timed(
            ["--trace-dir", small_dir, "history", "wf-small", "--last", "20"], rounds
        )
        big_wall, big_cpu = timed(
            ["--trace-dir", big_dir, "history", "wf-big", "--last", "20"], rounds
        )
    finally:
        big.unlink()
    print(f"history --last 20 (median of {rounds}; {big_mib} MiB trace written in {made:.1f} s)")
    print(f"  {'trace':<10}{'wall ms':>10}{'cpu ms':>10}")
    print(f"  {'1 MiB':<10}{small_wall * 1000:>10.1f}{small_cpu * 1000:>10.1f}")
    print(f"  {f'{big_mib} MiB':<10}{big_wall * 1000:>10.1f}{big_cpu * 1000:>10.1f}")
    print(
        f"  ratio big/small: wall {big_wall / small_wall:.2f}x, "
        f"cpu {big_cpu / small_cpu:.2f}x (goal <= 1.5x)"
    )


def bench_ps(base: Path, count: int, rounds: int) -> None:
    trace_dir = base / "many"
    for i in range(count):
        path = trace_dir / f"wf-{i:05d}" / "trace.jsonl"
        path.parent.mkdir(parents=True)
        status = "completed" if i % 10 else "running"
        body = record(path.parent.name, 1) * 5 + (
            record(path.parent.name, 6, "completed")
            if status == "completed"
            else live_record(path.parent.name, 6)
        )
        path.write_text(body)
    startup_wall, _ = timed(["--trace-dir", base / "nothing-here", "ps"], rounds)
    wall, cpu = timed(["--trace-dir", trace_dir, "ps"], rounds)
    json_wall, _ = timed(["--trace-dir", trace_dir, "ps", "--json"], rounds)
    print(f"ps over {count} workflows (median of {rounds})")
    print(
        f"  text: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms cpu; "
        f"--json: {json_wall * 1000:.0f} ms wall"
    )
    print(f"  (process start and exit alone: {startup_wall * 1000:.0f} ms; goal < 1000 ms)")
    from bench_flowd import start_flowd

    flowd, sock, _ = start_flowd(base, "--root", str(trace_dir))
    try:
        through = ["--socket", sock, "--trace-dir", trace_dir, "ps"]
        daemon_wall, daemon_cpu = timed(through, rounds)
        daemon_json, _ = timed([*through, "--json"], rounds)
    finally:
        flowd.terminate()
        flowd.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)
    print(
        f"  through flowd: {daemon_wall * 1000:.0f} ms wall, {daemon_cpu * 1000:.0f} ms cpu "
        f"(flowctl's); --json: {daemon_json * 1000:.0f} ms wall"
    )
    shutil.rmtree(trace_dir)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_share(pid: int, seconds: float) -> float:
    time.sleep(1.0)  # past start-up and the first drawing
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - start)


def bench_watch_idle(base: Path, seconds: float) -> None:
    trace_dir = base / "idle"
    path = trace_dir / "wf-idle" / "trace.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(live_record("wf-idle", step) for step in range(1, 101)))
    args = [*FLOWCTL, "--trace-dir", str(trace_dir), "watch", "wf-idle"]
    plain = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        plain_share = idle_share(plain.pid, seconds)
    finally:
        plain.terminate()
        plain.wait()
    import pexpect

    screen = pexpect.spawn(
        args[0], args[1:], dimensions=(40, 120), env={**os.environ, "TERM": "xterm"}
    )
    try:
        screen.expect("wf-idle", timeout=10)
        screen_share = idle_share(screen.pid, seconds)
        screen.send("q")
        screen.expect(pexpect.EOF, timeout=10)
    finally:
        screen.close(force=True)
    print(f"watch while nothing changes ({seconds:.0f} s, poll interval 0.1 s)")
    print(
        f"  plain output: {plain_share * 100:.2f}% of a core; "
        f"full screen: {screen_share * 100:.2f}% (goal < 2%)"
    )


def bench_watch_latency(base: Path, samples: int) -> None:
    trace_dir = base / "latency"
    path = trace_dir / "wf-lat" / "trace.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(live_record("wf-lat", 1))
    proc = subprocess.Popen(
        [*FLOWCTL, "--trace-dir", str(trace_dir), "watch", "wf-lat"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    delays = []
    try:
        proc.stdout.readline()  # the first record
        for step in range(2, samples + 2):
            time.sleep(0.05 + (step % 7) * 0.023)  # land at varied points of the poll cycle
            with path.open("a") as handle:
                landed = time.perf_counter()
                handle.write(live_record("wf-lat", step))
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            assert ready, "watch printed nothing"
            line = proc.stdout.readline().decode()
            delays.append(time.perf_counter() - landed)
            assert f"step {step} " in line, line
    finally:
        proc.terminate()
        proc.wait()
    delays.sort()
    print(f"watch latency, record landing -> line printed ({samples} records, poll 0.1 s)")
    print(
        f"  median {statistics.median(delays) * 1000:.0f} ms, "
        f"p95 {delays[int(len(delays) * 0.95) - 1] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
        "(goal < 100 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big trace")
    parser.add_argument("--workflows", type=int, default=10_000, help="workflows for ps")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle watch")
    parser.add_argument("--rounds", type=int, default=5, help="runs per timing")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="sections to run, comma-separated"
    )
    options = parser.parse_args()
    only = set(options.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-flowctl-") as tmp:
        base = Path(tmp)
        if "history" in only:
            bench_history(base, options.big_mib, options.rounds)
        if "ps" in only:
            bench_ps(base, options.workflows, options.rounds)
        if "idle" in only:
            bench_watch_idle(base, options.idle)
        if "latency" in only:
            bench_watch_latency(base, 40)


if __name__ == "__main__":
    main()
