"""flowd under load: figures printed, nothing asserted.

    python bench/bench_flowd.py [--workflows 10000] [--writers 50] [--clients 100]
                                [--seconds 8] [--idle 10]
    python bench/bench_flowd.py --scale 10000 100000 [--idle 10]

1. 10,000 workflows indexed (traces copied from a real run of examples/pipeline.py):
   time until ready, the daemon's RSS, ``ps`` / ``ps status=running`` / ``get`` round
   trips (median, p99), and idle CPU (% of one core) over ``--idle`` seconds.
2. 50 workflows writing (a writer process appending real-shaped records, one write per
   workflow every 20 ms, as the core's flusher does) while 100 clients each watch one
   of them: notifications delivered (count, in order) and the latency from the write to
   the client (the writer stamps each record with the time it wrote it).
3. A client that watches everything and never reads (flowd run with --stall-timeout 2),
   beside one that reads: whether the first is cut off, the daemon's RSS meanwhile, and
   what the second received.
4. Only with ``--scale N ...`` (instead of 1-3; minutes at 100,000): N workflow
   directories of 10 records each, written straight to disk. flowd with ``--root``: time
   until ready, RSS, the inotify watches it holds, ``ps`` / ``get`` round trips, idle CPU;
   ``flowctl ps`` through flowd, and from the files with no daemon (plain and ``--json``).

Targets (docs/performance.md): RSS < 150 MB, ps < 50 ms, idle CPU < 1%, p99 latency < 100 ms; at
100,000 workflows: RSS < 150 MB, ready < 10 s, ps < 500 ms, watches far under the
per-user limit, ``flowctl ps`` from files < 3 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from tests.support.flowd import Flowd  # noqa: E402
from tests.support.rpc import Client  # noqa: E402

FLUSH = 0.02
TIMEOUT = 60.0  # a client's socket timeout


# -- helpers --------------------------------------------------------------------------


def row(label: str, text: str) -> None:
    print(f"  {label:<33}{text}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def template(base: Path) -> list[dict[str, Any]]:
    """The records of a real run of examples/pipeline.py."""
    env = dict(os.environ, XDG_STATE_HOME=str(base / "template-state"))
    subprocess.run(
        [sys.executable, str(PROJECT / "examples" / "pipeline.py"), "--workflow-id", "tpl",
         "--trace-dir", str(base / "template"), "--delay", "0"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    text = (base / "template" / "tpl" / "trace.jsonl").read_text()
    return [json.loads(line) for line in text.split("\n") if line]


def start_flowd(base: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, float]:
    """flowd on a socket under /tmp (removed with the socket's directory), its stderr in
    ``base/flowd.log``; once it answers a ping: its process, its socket, the seconds it took."""
    started = time.monotonic()
    daemon = Flowd(
        "--log-level",
        "warning",
        *args,
        state=base / "state",
        log_path=base / "flowd.log",
        ready_timeout=math.inf,
    )
    return daemon.proc, daemon.socket, time.monotonic() - started


# -- 1. many workflows ----------------------------------------------------------------


def write_many(root: Path, records: list[dict[str, Any]], count: int) -> None:
    tail = records[-4:]
    for number in range(count):
        workflow_id = f"wf-{number:05d}"
        lines = []
        for record in tail:
            lines.append(json.dumps(dict(record, workflow_id=workflow_id), separators=(",", ":")))
        if number % 100 == 0:  # 1%: still running (this process is the live writer)
            last = dict(tail[-2], workflow_id=workflow_id, pid=os.getpid(), pid_start=None)
            lines.append(json.dumps(last, separators=(",", ":")))
        directory = root / workflow_id
        directory.mkdir(parents=True)
        (directory / "trace.jsonl").write_text("\n".join(lines) + "\n")


def timings(
    client: Client, method: str, rounds: int, **params: Any
) -> tuple[list[float], list[float], int]:
    """Round trips (request sent .. whole answer received) and the client's JSON decode."""
    trips = []
    decodes = []
    size = 0
    for _ in range(rounds):
        start = time.perf_counter()
        line = client.raw_call(method, **params)
        received = time.perf_counter()
        json.loads(line)
        trips.append(received - start)
        decodes.append(time.perf_counter() - received)
        size = len(line)
    return trips, decodes, size


def bench_many(base: Path, records: list[dict[str, Any]], count: int, idle: float) -> None:
    root = base / "many"
    started = time.monotonic()
    write_many(root, records, count)
    print(f"wrote {count} traces in {time.monotonic() - started:.1f} s")
    proc, sock, ready = start_flowd(base, "--root", str(root))
    try:
        client = Client(sock, TIMEOUT)
        assert client.call("ping")["workflows"] == count
        print(f"flowd (inotify) ready with {count} workflows indexed after {ready:.2f} s")
        row("RSS", f"{rss_mb(proc.pid):7.1f} MB   (target < 150)")
        for label, method, params, rounds in (
            ("ps (every workflow)", "ps", {}, 100),
            ("ps status=running", "ps", {"status": "running"}, 100),
            ("get", "get", {"workflow_id": "wf-04242"}, 300),
        ):
            trips, decodes, size = timings(client, method, rounds, **params)
            print(
                f"  {label:<24} round trip median {statistics.median(trips) * 1000:5.1f} ms"
                f"  p99 {pct(trips, 0.99) * 1000:5.1f} ms;  client's json.loads of the"
                f" {size / 1e6:.2f} MB answer: median {statistics.median(decodes) * 1000:5.1f} ms"
            )
        client.close()
        time.sleep(1)
        before = cpu_seconds(proc.pid)
        time.sleep(idle)
        used = cpu_seconds(proc.pid) - before
        row(f"idle CPU over {idle:.0f} s", f"{100 * used / idle:7.2f} % of a core (target < 1)")
        row("RSS after", f"{rss_mb(proc.pid):7.1f} MB")
        connections = [Client(sock, TIMEOUT) for _ in range(1000)]
        start = time.perf_counter()
        for conn in connections:
            conn.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        answered = sum(1 for conn in connections if b'"result"' in conn.sock.recv(4096))
        took = time.perf_counter() - start
        row("1,000 connections at once", f"{answered} pings answered in {took * 1000:.0f} ms")
        row("RSS with them open", f"{rss_mb(proc.pid):7.1f} MB")
        for conn in connections:
            conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)
    proc, sock, ready = start_flowd(base, "--root", str(root), "--watcher", "poll")
    try:
        print(f"flowd (--watcher poll) ready with {count} workflows after {ready:.2f} s")
        time.sleep(1)
        before = cpu_seconds(proc.pid)
        time.sleep(idle)
        used = cpu_seconds(proc.pid) - before
        row(f"idle CPU over {idle:.0f} s", f"{100 * used / idle:7.2f} % of a core")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)


# -- 2. writers and watchers ----------------------------------------------------------


def writer(root: str, workflows: int, seconds: float, template_path: str) -> None:
    """Append one record per workflow every FLUSH seconds, one write each, for seconds."""
    record = json.loads(Path(template_path).read_text())
    files = []
    for number in range(workflows):
        path = Path(root) / f"live-{number:02d}" / "trace.jsonl"
        files.append(os.open(path, os.O_WRONLY | os.O_APPEND))
    step = 1
    end = time.monotonic() + seconds
    while True:
        done = time.monotonic() >= end
        step += 1
        for number, fd in enumerate(files):
            now = time.time()
            line = dict(
                record,
                workflow_id=f"live-{number:02d}",
                step=step,
                status="completed" if done else "running",
                bench_t=now,
            )
            os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        if done:
            break
        time.sleep(FLUSH)
    for fd in files:
        os.close(fd)


def start_writer(root: Path, workflows: int, seconds: float, base: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--writer", str(root), str(workflows), str(seconds),
         str(base / "record.json")]
    )  # fmt: skip


def prepare_live(root: Path, records: list[dict[str, Any]], workflows: int, base: Path) -> None:
    record = dict(records[len(records) // 2], pid=os.getpid(), pid_start=None)
    (base / "record.json").write_text(json.dumps(record))
    for number in range(workflows):
        path = root / f"live-{number:02d}" / "trace.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        first = dict(record, workflow_id=f"live-{number:02d}", step=1, bench_t=time.time())
        path.write_text(json.dumps(first, separators=(",", ":")) + "\n")


def bench_watch(
    base: Path, records: list[dict[str, Any]], writers: int, clients: int, seconds: float
) -> None:
    root = base / "live"
    prepare_live(root, records, writers, base)
    proc, sock, _ = start_flowd(base, "--root", str(root))
    try:
        watchers = []
        selector = selectors.DefaultSelector()
        for number in range(clients):
            client = Client(sock, TIMEOUT)
            client.call("watch", workflow_id=f"live-{number % writers:02d}")
            client.sock.setblocking(False)
            state = {"steps": [], "latency": [], "done": False, "client": client}
            watchers.append(state)
            selector.register(client.sock, selectors.EVENT_READ, state)
        feed = start_writer(root, writers, seconds, base)
        rss = [rss_mb(proc.pid)]
        deadline = time.monotonic() + seconds + 30
        next_sample = time.monotonic()
        while not all(w["done"] for w in watchers) and time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                state = key.data
                client = state["client"]
                try:
                    data = client.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                received = time.time()
                if not data:
                    state["done"] = True
                    selector.unregister(client.sock)
                    continue
                client.buffer += data
                *lines, client.buffer = client.buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    record = message["params"]["record"]
                    state["steps"].append(record["step"])
                    if record["step"] > 1:
                        state["latency"].append(received - record["bench_t"])
                    if record["status"] == "completed":
                        state["done"] = True
            if time.monotonic() >= next_sample:
                rss.append(rss_mb(proc.pid))
                next_sample += 0.5
        feed.wait()
        expected = None
        in_order = 0
        total = 0
        latencies: list[float] = []
        for state in watchers:
            steps = state["steps"]
            total += len(steps)
            latencies += state["latency"]
            if steps and steps == list(range(steps[0], steps[0] + len(steps))):
                in_order += 1
            expected = steps[-1] if steps else expected
        written = (expected or 0) * clients
        print(
            f"{writers} workflows writing every {FLUSH * 1000:.0f} ms for {seconds:.0f} s,"
            f" {clients} clients watching one each"
        )
        row("notifications delivered", f"{total} of {written} (one per record per watcher)")
        row("clients with every step in order", f"{in_order} of {clients}")
        row(
            "latency write -> client",
            f"median {statistics.median(latencies) * 1000:5.1f} ms"
            f"   p99 {pct(latencies, 0.99) * 1000:5.1f} ms"
            f"   max {max(latencies) * 1000:5.1f} ms (target p99 < 100)",
        )
        row("daemon RSS", f"{min(rss):.1f} .. {max(rss):.1f} MB")
        for state in watchers:
            state["client"].close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)


# -- 3. a client that stops reading ---------------------------------------------------


def bench_slow_client(
    base: Path, records: list[dict[str, Any]], writers: int, seconds: float
) -> None:
    root = base / "slow"
    prepare_live(root, records, writers, base)
    proc, sock, _ = start_flowd(base, "--root", str(root), "--stall-timeout", "2")
    try:
        slow = Client(sock, TIMEOUT)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.call("watch")  # everything, and then never read
        healthy = Client(sock, TIMEOUT)
        healthy.call("watch")
        healthy.sock.settimeout(0.2)
        feed = start_writer(root, writers, seconds, base)
        start = time.monotonic()
        rss = [rss_mb(proc.pid)]
        got = 0
        while feed.poll() is None:
            try:
                data = healthy.sock.recv(1 << 20)
                got += data.count(b"\n")
            except TimeoutError:
                pass
            rss.append(rss_mb(proc.pid))
        cut = None
        for line in (base / "flowd.log").read_text().splitlines():
            if "cut off" in line:
                cut = line
        slow.sock.settimeout(5)
        closed = False
        try:
            while slow.sock.recv(1 << 20):
                pass
            closed = True
        except ConnectionError:
            closed = True  # reset: closed by the daemon with data still in flight
        except TimeoutError:
            pass
        print(
            f"a client watching everything that never reads, {writers} workflows writing"
            f" for {seconds:.0f} s"
        )
        why = f" ({cut.split('flowd WARNING ')[-1]})" if cut else ""
        row("cut off", ("yes" if cut and closed else "NO") + why)
        row("daemon RSS meanwhile", f"{min(rss):.1f} .. {max(rss):.1f} MB")
        row(
            "a healthy client meanwhile got",
            f"{got} notifications in {time.monotonic() - start:.1f} s",
        )
        slow.close()
        healthy.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)


# -- 4. at scale (--scale) ------------------------------------------------------------

SCALE_RECORDS = 10
WRITE_THREADS = 4
MARK = "@WF@"  # stands for the workflow id in a trace written once, then copied


def write_scale(root: Path, records: list[dict[str, Any]], count: int) -> None:
    """``count`` workflow directories of the template's last 10 records each, written
    straight to disk (directories 0700, files 0600, as the core makes them); 1% end
    with a running record whose writer is this process."""
    tail = [dict(record, workflow_id=MARK) for record in records[-SCALE_RECORDS:]]
    running = dict(tail[-2], step=tail[-1]["step"], pid=os.getpid(), pid_start=None)
    shapes = []
    for last in (tail[-1], running):
        lines = [json.dumps(record, separators=(",", ":")) for record in [*tail[:-1], last]]
        shapes.append(("\n".join(lines) + "\n").encode().split(MARK.encode()))
    lock = str(os.getpid()).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def write(numbers: range) -> None:
        for number in numbers:
            workflow_id = f"wf-{number:06d}"
            directory = os.path.join(root, workflow_id)
            os.mkdir(directory, 0o700)
            fd = os.open(os.path.join(directory, "trace.jsonl"), flags, 0o600)
            os.write(fd, workflow_id.encode().join(shapes[number % 100 == 0]))
            os.close(fd)
            fd = os.open(os.path.join(directory, "writer.lock"), flags, 0o600)
            os.write(fd, lock)
            os.close(fd)

    os.mkdir(root, 0o700)
    # the system calls wait on the file system more than on the interpreter: in threads
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write, [range(i, count, WRITE_THREADS) for i in range(WRITE_THREADS)]))


def inotify_watches(pid: int) -> int:
    """The watches held by a process's inotify instances (its fdinfo lists one a line)."""
    watches = 0
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(link) != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{link.name}").read_text()
        except OSError:
            continue  # closed meanwhile
        watches += sum(1 for line in text.splitlines() if line.startswith("inotify"))
    return watches


def flowctl_wall(args: list[str], env: dict[str, str], rounds: int) -> tuple[float, int]:
    """Median wall seconds of ``flowctl ARGS`` (a whole process), and its output's size."""
    walls = []
    size = 0
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flowctl", *args], env=env, capture_output=True, check=False
        )
        walls.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"flowctl {' '.join(args)}: {done.stderr.decode()[-500:]}")
        size = len(done.stdout)
    return statistics.median(walls), size


def bench_scale(base: Path, records: list[dict[str, Any]], count: int, idle: float) -> None:
    root = base / f"scale-{count}"
    started = time.monotonic()
    write_scale(root, records, count)
    print(
        f"wrote {count} traces of {SCALE_RECORDS} records"
        f" ({count // 100} running) in {time.monotonic() - started:.1f} s"
    )
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    env = dict(os.environ, XDG_STATE_HOME=str(base / "state"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    proc, sock, ready = start_flowd(base, "--root", str(root))
    try:
        client = Client(sock, timeout=120)
        assert client.call("ping")["workflows"] == count
        print(f"flowd with {count} workflows: ready after {ready:.2f} s  (target < 10)")
        row("RSS once ready", f"{rss_mb(proc.pid):7.1f} MB   (target < 150)")
        row("inotify watches once ready", f"{inotify_watches(proc.pid):7d}   (limit {limit})")
        rounds = min(100, max(5, 1_000_000 // count))
        for label, method, params, times in (
            ("ps (every workflow)", "ps", {}, rounds),
            ("ps status=running", "ps", {"status": "running"}, rounds),
            ("get", "get", {"workflow_id": f"wf-{count // 2 + 1:06d}"}, 300),
        ):
            trips, decodes, size = timings(client, method, times, **params)
            print(
                f"  {label:<24} round trip median {statistics.median(trips) * 1000:6.1f} ms"
                f"  p99 {pct(trips, 0.99) * 1000:6.1f} ms  ({times} calls);  client's"
                f" json.loads of the {size / 1e6:.2f} MB answer:"
                f" median {statistics.median(decodes) * 1000:5.1f} ms"
            )
        client.close()
        row("RSS after the calls", f"{rss_mb(proc.pid):7.1f} MB")
        through = ["--socket", str(sock), "--trace-dir", str(root)]
        wall, size = flowctl_wall([*through, "ps"], env, 3)
        row("flowctl ps through flowd", f"{wall * 1000:7.0f} ms   ({size / 1e6:.1f} MB printed)")
        time.sleep(1)
        before = cpu_seconds(proc.pid)
        time.sleep(idle)
        used = cpu_seconds(proc.pid) - before
        row(f"idle CPU over {idle:.0f} s", f"{100 * used / idle:7.2f} % of a core (target < 1)")
        row("inotify watches then", f"{inotify_watches(proc.pid):7d}")
        row("RSS then", f"{rss_mb(proc.pid):7.1f} MB")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(sock.parent, ignore_errors=True)
    env["DOEFF_FLOW_SOCKET"] = str(base / "nobody-listens.sock")
    wall, size = flowctl_wall(["--trace-dir", str(root), "ps"], env, 3)
    row("flowctl ps from files", f"{wall * 1000:7.0f} ms   (target < 3000; {size / 1e6:.1f} MB)")
    wall, size = flowctl_wall(["--trace-dir", str(root), "--json", "ps"], env, 3)
    row("flowctl --json ps from files", f"{wall * 1000:7.0f} ms   ({size / 1e6:.1f} MB)")
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        writer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflows", type=int, default=10000)
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--idle", type=float, default=10)
    parser.add_argument(
        "--scale", type=int, nargs="+", metavar="WORKFLOWS", help="only section 4, at each count"
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-flowd-"))
    try:
        records = template(base)
        if args.scale:
            for count in args.scale:
                bench_scale(base, records, count, args.idle)
            return 0
        bench_many(base, records, args.workflows, args.idle)
        bench_watch(base, records, args.writers, args.clients, args.seconds)
        bench_slow_client(base, records, args.writers, args.seconds)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
