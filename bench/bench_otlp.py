"""flowd's OTLP exporter: the CPU it adds to indexing, measured side by side in one run.

    python bench/bench_otlp.py [--rate 10000] [--seconds 20]

Two flowd processes index the same trace directory at the same time, one plain and one
with ``--otlp-endpoint`` pointing at a local OTLP/HTTP receiver (in this process). A real
doeff workflow writes ``--rate`` records a second (nested calls, so spans end all the
time). Each flowd's CPU is read from /proc over the same window; the exporter's cost is
the difference (the goal: under 5% of a core at 10,000 records/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flowd import PROJECT, TIMEOUT, Client, cpu_seconds, start_flowd

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


class Receiver(BaseHTTPRequestHandler):
    spans = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        count = sum(
            len(scope.get("spans", []))
            for resource in json.loads(body).get("resourceSpans", [])
            for scope in resource.get("scopeSpans", [])
        )
        with Receiver.lock:
            Receiver.spans += count
            Receiver.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
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
        print(f"receiver: {Receiver.spans:,} spans in {Receiver.requests:,} requests")
        print(f"exporter counters: {json.dumps(stats)}")


if __name__ == "__main__":
    main()
