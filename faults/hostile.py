"""Hostile JSON-RPC against a running flowd: garbage, deep nesting, huge numbers, wrong
types, unknown methods, over-long lines, half-closed sockets, abrupt closes, floods of
connections and clients that send half a line and stall. Meanwhile a well-behaved client
pings; flowd's RSS is sampled; the trace directory must come out untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PY, Flowd, env, rss_kib, tempdir

from tests.support.rpc import Client

RSS_BOUND_MIB = 200  # the bound stated for flowd's resident memory under attack
PING_TIMEOUT = 5.0
METHODS = ["ping", "ps", "get", "history", "watch", "unwatch", "roots.list", "roots.add"]

SEED_WORKFLOW = r"""
import sys
from doeff import Get, Put, do, slog
from doeff_flow_core import run_workflow

@do
def flow():
    for i in range(50):
        yield slog("s", i=i)
        v = yield Get("n")
        yield Put("n", (v or 0) + 1)
    if sys.argv[2].startswith("fail"):
        raise ValueError("on purpose")
    return 1

run_workflow(flow(), sys.argv[2], sys.argv[1], max_trace_bytes=2000)
"""


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**64), 10**300, rng.randrange(-(10**9), 10**9)])
    if kind == 3:
        return rng.choice([1e308, -0.0, 3.5, 1e-320])
    if kind == 4:
        return rng.choice(["", "wf-0", "../..", "/", "s1", "\x00", "\u202e", "\ud800x", "a" * 300])
    if kind == 5:
        return rng.choice(["running", "lost", "nope", "wf-1", "/tmp", "/proc/self", "."])
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["workflow_id", "root", "last", "status", "after", "subscription", "path", "x"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def message(rng: random.Random) -> bytes:
    """One hostile line (without its newline)."""
    kind = rng.randrange(14)
    if kind == 0:  # garbage bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"")
    if kind == 1:  # deep nesting, as a whole message or inside params
        depth = rng.choice([1000, 100_000, 500_000])
        inner = b"[" * depth + b"]" * depth
        if rng.random() < 0.5:
            return inner
        return b'{"jsonrpc":"2.0","id":1,"method":"ps","params":{"status":' + inner + b"}}"
    if kind == 2:  # huge numbers
        number = rng.choice([b"9" * 5000, b"1e999999", b"-1e-999999", b"1" * 100_000])
        return b'{"jsonrpc":"2.0","id":' + number + b',"method":"ping"}'
    if kind == 3:  # wrong types in the envelope
        envelope = {
            "jsonrpc": rng.choice(["2.0", "1.0", 2, None]),
            "id": _value(rng),
            "method": rng.choice([*METHODS, 5, None, [], "rpc.x", ""]),
        }
        if rng.random() < 0.7:
            envelope["params"] = _value(rng)
        return json.dumps(envelope).encode()
    if kind == 4:  # unknown methods
        name = rng.choice(["__init__", "shutdown", "_daemon", "roots.remove", "PING", "x" * 500])
        return json.dumps({"jsonrpc": "2.0", "id": rng.randrange(9), "method": name}).encode()
    if kind == 5:  # batches
        return json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "ping"}] * 3).encode()
    if kind == 6:  # invalid UTF-8 and NULs in strings
        return b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"workflow_id":"\xff\x00"}}'
    if kind == 7:  # a line over the 1 MiB bound
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"' + b"a" * (1 << 21) + b'"}'
    if kind == 8:  # JSON that is not an object
        return json.dumps(_value(rng)).encode()
    if kind == 9:  # notifications (no id) of any method
        params = _value(rng)
        return json.dumps(
            {"jsonrpc": "2.0", "method": rng.choice(METHODS), "params": params}
        ).encode()
    # well-formed requests of the real methods with hostile params
    params = {
        k: _value(rng)
        for k in rng.sample(
            ["workflow_id", "root", "last", "status", "after", "subscription", "path"],
            rng.randrange(4),
        )
    }
    ident = rng.choice([1, "x", None, 2**70, 1.5])
    return json.dumps(
        {"jsonrpc": "2.0", "id": ident, "method": rng.choice(METHODS), "params": params}
    ).encode()


@dataclass
class Figures:
    messages: int = 0
    connections: int = 0
    pings: int = 0
    unanswered: int = 0
    worst_ping: float = 0.0
    peak_rss_kib: int = 0
    touched: int = 0
    internal_errors: int = 0
    flowd_died: bool = False
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"hostile: {self.messages} messages over {self.connections} connections, "
            f"{self.unanswered}/{self.pings} pings unanswered, worst ping "
            f"{self.worst_ping * 1000:.0f} ms, peak RSS {self.peak_rss_kib / 1024:.0f} MB "
            f"(bound {RSS_BOUND_MIB} MB), {self.touched} trace files touched, "
            f"{self.internal_errors} internal errors/dropped connections, "
            f"flowd {'DIED' if self.flowd_died else 'alive'}"
        )

    def ok(self) -> bool:
        return (
            not (self.unanswered or self.touched or self.internal_errors or self.flowd_died)
            and self.peak_rss_kib < RSS_BOUND_MIB * 1024
            and self.pings > 0
        )


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            found[str(path)] = (st.st_mtime_ns, st.st_size, digest)
        found[directory] = (Path(directory).stat().st_mtime_ns, 0, "")
    return found


class Watchdog:
    """The well-behaved client and the RSS sampler, on threads."""

    def __init__(self, daemon: Flowd, fig: Figures) -> None:
        self.daemon = daemon
        self.fig = fig
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._ping, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def __enter__(self) -> Watchdog:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _ping(self) -> None:
        client: Client | None = None
        while not self.stop.is_set():
            begun = time.monotonic()
            try:
                if client is None:
                    client = Client(self.daemon.socket, timeout=PING_TIMEOUT)
                reply = client.request("ping")
                if "result" not in reply:
                    raise ConnectionError(str(reply))
            except (OSError, ValueError) as exc:
                self.fig.unanswered += 1
                self.fig.problems.append(f"ping unanswered: {exc!r}")
                if client is not None:
                    client.close()
                client = None
            self.fig.pings += 1
            self.fig.worst_ping = max(self.fig.worst_ping, time.monotonic() - begun)
            self.stop.wait(0.005)
        if client is not None:
            client.close()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.fig.peak_rss_kib = max(self.fig.peak_rss_kib, rss_kib(self.daemon.pid))
            self.stop.wait(0.01)


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def _drain(sock: socket.socket, fig: Figures) -> None:
    """Read answers until flowd closes (after our half-close); count internal errors."""
    data = b""
    with contextlib.suppress(OSError):
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    internal = data.count(b'"code":-32603') + data.count(b'"code": -32603')
    if internal:
        fig.internal_errors += internal
        fig.problems.append(f"-32603 answered: {data[:200]!r}")


def _attack(daemon: Flowd, fig: Figures, count: int, rng: random.Random) -> None:
    stalled: list[socket.socket] = []
    sent = 0
    while sent < count:
        pattern = rng.randrange(10)
        try:
            if pattern == 0:  # a flood of connections, each a ping, all open at once
                flood = [_connect(daemon.socket) for _ in range(rng.randrange(50, 200))]
                fig.connections += len(flood)
                for sock in flood:
                    sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
                    sent += 1
                for sock in flood:
                    sock.close()
                continue
            sock = _connect(daemon.socket)
            fig.connections += 1
            batch = [message(rng) for _ in range(rng.randrange(1, 40))]
            sent += len(batch)
            if pattern == 1:  # half a line, then stall (kept open through the rest)
                sock.sendall(b"\n".join(batch)[: rng.randrange(1, 200)])
                stalled.append(sock)
                if len(stalled) > 30:
                    stalled.pop(0).close()
            elif pattern == 2:  # everything, then an abrupt close without reading
                with contextlib.suppress(OSError):
                    sock.sendall(b"\n".join(batch) + b"\n")
                sock.close()
            else:  # pipelined, half-closed, answers read to the end
                with contextlib.suppress(OSError):
                    sock.sendall(b"\n".join(batch) + b"\n")
                    sock.shutdown(socket.SHUT_WR)
                _drain(sock, fig)
                sock.close()
        except OSError as exc:
            fig.problems.append(f"connect/send failed: {exc!r}")
            if not daemon.alive():
                fig.flowd_died = True
                break
    fig.messages += sent
    for sock in stalled:
        sock.close()


def run(count: int, seed: int = 0) -> Figures:
    fig = Figures()
    rng = random.Random(seed)
    base = tempdir("fh")
    traces = base / "traces"
    for workflow_id in ("calm-0", "calm-1", "fail-2"):
        subprocess.run(
            [PY, "-c", SEED_WORKFLOW, str(traces), workflow_id],
            env=env(),
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    (traces / "calm-0" / "trace.jsonl").open("ab").write(b'{"torn": ')
    before = snapshot(traces)
    daemon = Flowd([traces])
    try:
        with Watchdog(daemon, fig):
            _attack(daemon, fig, count, rng)
            time.sleep(0.2)
        if not daemon.alive():
            fig.flowd_died = True
        else:
            daemon.answers()
        log = daemon.log()
        errors = [line for line in log.splitlines() if " flowd ERROR " in line]
        fig.internal_errors += log.count("Traceback (most recent call last)") + len(errors)
        fig.problems += [f"flowd logged: {line}" for line in errors[:5]]
    finally:
        daemon.cleanup()
        after = snapshot(traces)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        fig.touched = len(changed)
        fig.problems += [f"touched {path}" for path in sorted(changed)[:5]]
        shutil.rmtree(base, ignore_errors=True)
    return fig
