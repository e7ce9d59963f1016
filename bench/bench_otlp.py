"""flowd's OTLP exporter: the CPU it adds to indexing, and the highest span rate it
sustains without dropping a span, each measured side by side in one run.

    python bench/bench_otlp.py [--rate 10000] [--seconds 20]
    python bench/bench_otlp.py --ramp [--steps 2000,5000,...] [--step-seconds 10]
                               [--before REV] [--effects 1]

Default: two flowd processes index the same trace directory at the same time, one plain
and one with ``--otlp-endpoint`` pointing at a local OTLP/HTTP receiver (in this
process). A real doeff workflow writes ``--rate`` records a second (nested calls, so
spans end all the time). Each flowd's CPU is read from /proc over the same window; the
exporter's cost is the difference (the goal: under 5% of a core at 10,000 records/s).

``--ramp``: a stepped ramp of spans a second (each step ``--step-seconds`` long, a fresh
flowd and trace directory each), written by real doeff workflows (several processes, a
call with ``--effects`` effects per span) and exported by a real flowd to the receiver.
Each step reports the spans in the traces (as ``flowctl export`` reads them), what the
receiver took, and flowd's counters (the spans it got, sent, dropped, rejected, the
deepest queue seen), so that the highest rate with 0 dropped shows. With ``--before
REV`` each step runs flowd from git revision REV too (its tree unpacked in a temporary
directory; or a directory holding a tree), alternating with this tree's flowd, so that
a change is measured before and after in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flowd import PROJECT, TIMEOUT, Client, cpu_seconds, start_flowd

from doeff_flow_core.timeline.spans import spans_of
from doeff_flow_core.tracefiles.reading import RecordStream
from tests.support.flowd import socket_dir
from tests.support.procs import wait_until

WRITER = """
import sys, time
from doeff import Get, Put, do
from doeff_flow_core import run_workflow

@do
def unit():
    for _ in range(5):
        n = yield Get("n")
        yield Put("n", n + 1)

@do
def main(seconds, rate):
    start = time.monotonic()
    done = 0
    while time.monotonic() - start < seconds:
        for _ in range(10):
            yield unit()
            yield Put("i", done)  # the caller moves on: the next unit() is a new span
        done += 110
        pause = start + done / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return done

print(run_workflow(main(float(sys.argv[2]), float(sys.argv[3])), "wf-rate", sys.argv[1],
                   store={"n": 0}, max_trace_bytes=1 << 40).unwrap())
"""


# -- the ramp: the highest span rate exported without a drop ------------------------------

RAMP_WRITER = """
import sys, time
from doeff import Get, Put, do
from doeff_flow_core import run_workflow

@do
def unit(effects):
    n = 0
    for _ in range(effects):
        n = yield Get("n")
    return n

@do
def main(seconds, rate, effects):
    start = time.monotonic()
    done = 0
    while time.monotonic() - start < seconds:
        for _ in range(10):
            yield unit(effects)
            yield Put("i", done)  # the caller moves on: the next unit() is a new span
        done += 10
        pause = start + done / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return done

root, seconds, rate, effects, workflow_id = sys.argv[1:]
calls = run_workflow(main(float(seconds), float(rate), int(effects)), workflow_id, root,
                     store={"n": 0, "i": 0}, max_trace_bytes=1 << 40).unwrap()
print(calls + 2)  # its spans: one per call of unit, main's, the run's
"""
STEPS = "2000,5000,10000,15000,20000,30000,40000"
SPANS_PER_WRITER = 5_000  # a writer process for each this many spans a second
DRAIN_SECONDS = 60.0  # for flowd to read, and send or drop, what was written
COLUMNS = (  # header, key, format
    ("target/s", "target", "10,.0f"),
    ("written/s", "written", "10,.0f"),
    ("produced", "produced", "10,.0f"),  # spans in the traces
    ("flowd got", "flowd_produced", "10,.0f"),  # produced_spans (nan: not counted there)
    ("received", "received", "10,.0f"),  # by the collector
    ("sent", "sent", "10,.0f"),
    ("dropped", "dropped", "10,.0f"),
    ("rejected", "rejected", "10,.0f"),
    ("deepest q", "deepest", "10,.0f"),
    ("drain s", "drain", "10.1f"),
    ("CPU %", "cpu", "10.0f"),  # flowd's, from the first record written to the drain's end
)
QUIET_SECONDS = 3.0  # nothing queued and no counter moving: the drain is over


class Counting(BaseHTTPRequestHandler):
    """A collector that takes every request and counts its spans (a span is the only
    object with a ``spanId``; ``parentSpanId`` is another key)."""

    spans = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Counting.lock:
            Counting.spans += body.count(b'"spanId":')
            Counting.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def traces(root: Path) -> list[Path]:
    return sorted(root.glob("*/trace.jsonl"))


def unpack(revision: str, into: Path) -> Path:
    """The project's tree at ``revision`` (a directory: that tree), unpacked under ``into``."""
    if Path(revision).is_dir():
        return Path(revision).resolve()
    tree = into / f"tree-{revision}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT), "archive", revision], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def ramp_step(
    tree: Path, base: Path, endpoint: str, rate: float, seconds: float, effects: int
) -> dict[str, float]:
    """One step: flowd from ``tree`` exporting what writers produce at ``rate`` spans/s."""
    root = base / "traces"
    root.mkdir()
    sock_dir = socket_dir("bo")
    sock = sock_dir / "flowd.sock"
    env = dict(os.environ, PYTHONPATH=str(tree), XDG_STATE_HOME=str(base / "state"))
    with open(base / "flowd.log", "wb") as log:
        flowd = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowd",
                "--socket",
                str(sock),
                "--root",
                str(root),
                "--otlp-endpoint",
                endpoint,
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def otlp() -> dict[str, float]:
        with Client(sock, TIMEOUT) as client:
            answer: dict[str, float] = client.call("stats")["otlp"]
            return answer

    try:
        if not wait_until(lambda: sock.exists(), 30, 0.05):
            raise RuntimeError(f"flowd never listened: {(base / 'flowd.log').read_text()}")
        received_before = Counting.spans
        writers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RAMP_WRITER,
                    str(root),
                    str(seconds),
                    str(rate / count),
                    str(effects),
                    f"wf-{number}",
                ],
                env=dict(os.environ, PYTHONPATH=str(PROJECT), XDG_STATE_HOME=str(base / "state")),
                stdout=subprocess.PIPE,
                text=True,
            )
            for count in [max(1, math.ceil(rate / SPANS_PER_WRITER))]
            for number in range(count)
        ]
        cpu = cpu_seconds(flowd.pid)
        started = time.monotonic()
        deepest = 0.0
        while any(writer.poll() is None for writer in writers):
            deepest = max(deepest, otlp()["queued"])
            time.sleep(0.25)
        written = time.monotonic() - started
        calls = sum(int(writer.communicate()[0]) for writer in writers)
        stats, last, still = otlp(), None, time.monotonic()
        drain_end = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < drain_end:  # until every span is sent, dropped or rejected
            stats = otlp()
            deepest = max(deepest, stats["queued"])
            done = stats["sent_spans"] + stats["dropped_spans"] + stats["rejected_spans"]
            if done >= calls and not stats["queued"]:
                break
            if (done, stats["queued"]) != last:
                last, still = (done, stats["queued"]), time.monotonic()
            elif not stats["queued"] and time.monotonic() - still > QUIET_SECONDS:
                break  # nothing more comes (the traces may hold fewer spans than calls)
            time.sleep(0.1)
        drained = time.monotonic() - started - written
        used = cpu_seconds(flowd.pid) - cpu
        # what flowd can export: the spans the traces hold (now and then one fewer than
        # the calls a writer counted)
        produced = sum(len(list(spans_of(RecordStream(path)))) for path in traces(root))
    finally:
        flowd.terminate()
        flowd.wait(timeout=30)
        shutil.rmtree(sock_dir, ignore_errors=True)
    return {
        "target": rate,
        "written": calls / written,
        "produced": produced,
        "received": Counting.spans - received_before,
        "sent": stats["sent_spans"],
        "dropped": stats["dropped_spans"],
        "rejected": stats["rejected_spans"],
        "deepest": deepest,
        "drain": drained,
        "cpu": 100 * used / (written + drained),
        "flowd_produced": stats.get("produced_spans", math.nan),
    }


def ramp(args: argparse.Namespace) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    steps = [float(step) for step in args.steps.split(",")]
    print(
        f"{args.step_seconds:g} s a step, {args.effects} effect(s) a span, "
        f"{os.cpu_count()} CPUs; a writer process per {SPANS_PER_WRITER:,} spans/s"
    )
    print(f"{'flowd':>10} " + " ".join(f"{name:>10}" for name, _, _ in COLUMNS))
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
        trees = {"this": PROJECT}
        if args.before:
            trees = {"before": unpack(args.before, Path(tmp)), **trees}
        for tree in trees.values():  # each flowd runs its own tree's code
            env = dict(os.environ, PYTHONPATH=str(tree))
            code = "import flowd, doeff_flow_core as c; print(flowd.__file__, c.__file__)"
            found = subprocess.run(
                [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True
            ).stdout.split()
            assert all(Path(path).is_relative_to(tree) for path in found), found
        for number, rate in enumerate(steps):
            for name, tree in trees.items():
                base = Path(tmp) / f"step-{number}-{name}"
                base.mkdir()
                row = ramp_step(tree, base, endpoint, rate, args.step_seconds, args.effects)
                figures = " ".join(format(row[key], spec) for _, key, spec in COLUMNS)
                print(f"{name:>10} {figures}", flush=True)
                lost = row["produced"] - row["received"]
                if lost == 0 and row["dropped"] == 0:
                    best[name] = max(best.get(name, 0.0), row["written"])
    server.shutdown()
    for name in trees:
        print(f"{name}: highest rate with every span received: {best.get(name, 0):,.0f} spans/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--ramp", action="store_true", help="the stepped ramp of spans/s")
    parser.add_argument("--steps", default=STEPS, help=f"spans/s, in order (default {STEPS})")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--effects", type=int, default=1, help="effects in each span")
    parser.add_argument(
        "--before", metavar="REV", help="also run flowd from this git revision (or directory)"
    )
    args = parser.parse_args()
    if args.ramp:
        ramp(args)
        return
    overhead(args)


def overhead(args: argparse.Namespace) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
        base = Path(tmp)
        root = base / "traces"
        root.mkdir()
        plain, _, _ = start_flowd(base, "--root", str(root))
        (base / "flowd.log").rename(base / "plain.log")
        exporting, exporting_sock, _ = start_flowd(
            base, "--root", str(root), "--otlp-endpoint", endpoint
        )
        env = dict(os.environ, PYTHONPATH=str(PROJECT), XDG_STATE_HOME=str(base / "state"))
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(args.seconds), str(args.rate)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(min(2.0, args.seconds / 5))  # both have found the workflow
            trace = root / "wf-rate" / "trace.jsonl"
            lines_before = trace.read_bytes().count(b"\n")
            started = time.monotonic()
            cpu = {p.pid: cpu_seconds(p.pid) for p in (plain, exporting)}
            time.sleep(args.seconds * 0.7)
            wall = time.monotonic() - started
            used = {p.pid: cpu_seconds(p.pid) - cpu[p.pid] for p in (plain, exporting)}
            lines_after = trace.read_bytes().count(b"\n")
            writer.wait(timeout=args.seconds * 3 + 60)
            deadline = time.monotonic() + 30
            stats: dict[str, object] = {}
            while time.monotonic() < deadline:
                client = Client(exporting_sock, TIMEOUT)
                stats = client.call("ping").get("otlp", {})
                client.close()
                if not stats.get("queued"):
                    break
                time.sleep(0.5)
        finally:
            for proc in (writer, plain, exporting):
                proc.terminate()
                proc.wait(timeout=30)
            server.shutdown()
        rate = (lines_after - lines_before) / wall
        plain_pct = 100 * used[plain.pid] / wall
        export_pct = 100 * used[exporting.pid] / wall
        print(f"records written: {rate:,.0f}/s over a {wall:.1f} s window")
        print(f"flowd CPU, plain:             {plain_pct:5.1f}% of a core")
        print(f"flowd CPU, exporting to OTLP: {export_pct:5.1f}% of a core")
        print(
            f"exporter adds:                {export_pct - plain_pct:5.1f} points"
            f" ({export_pct / plain_pct if plain_pct else float('nan'):.2f}x)"
        )
        print(f"receiver: {Counting.spans:,} spans in {Counting.requests:,} requests")
        print(f"exporter counters: {json.dumps(stats)}")


if __name__ == "__main__":
    main()
