"""kill -9 flowd under load and restart it: workflows keep writing (and rotating), plain
socket watchers reconnect and resubscribe with ``after`` = the last {run, step} they got;
each must end with every record from its first, in order, without gaps or repeats."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import PY, Flowd, env, read_parts, tempdir

WORKFLOWS = 4
# argv: trace_dir workflow_id steps delay
WRITER = r"""
import sys, time
from doeff import Get, Put, do, slog
from doeff_flow_core import run_workflow

trace_dir, workflow_id = sys.argv[1], sys.argv[2]
steps, delay = int(sys.argv[3]), float(sys.argv[4])

@do
def tick(i):
    yield slog("tick", i=i)
    v = yield Get("n")
    yield Put("n", (v or 0) + 1)

@do
def flow():
    for i in range(steps):
        yield tick(i)
        time.sleep(delay)
    return steps

run_workflow(flow(), workflow_id, trace_dir, max_trace_bytes=50_000, keep_rotated=1000)
"""


class Watcher(threading.Thread):
    """Watches one workflow to its terminal record, reconnecting whenever flowd goes."""

    def __init__(self, socket_path: Path, workflow_id: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.socket_path = socket_path
        self.workflow_id = workflow_id
        self.deadline = deadline
        self.got: list[tuple[str, int]] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.done = False

    def run(self) -> None:
        while not self.done and time.monotonic() < self.deadline:
            try:
                self._session()
            except (OSError, ValueError):
                pass
            if not self.done:
                self.reconnects += 1
                time.sleep(0.02)

    def _session(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(15)
            sock.connect(str(self.socket_path))
            params: dict[str, Any] = {"workflow_id": self.workflow_id}
            if self.got:
                run, step = self.got[-1]
                params["after"] = {"run": run, "step": step}
            request = {"jsonrpc": "2.0", "id": 1, "method": "watch", "params": params}
            sock.sendall(json.dumps(request).encode() + b"\n")
            buffer = b""
            while time.monotonic() < self.deadline:
                data = sock.recv(1 << 20)
                if not data:
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "error" in message:
                        self.errors.append(json.dumps(message)[:200])
                        return
                    if message.get("method") != "trace":
                        continue
                    record = message["params"]["record"]
                    self.got.append((record["run"], record["step"]))
                    if record["status"] != "running":
                        self.done = True
                        return


@dataclass
class Figures:
    kills: int = 0
    watchers: int = 0
    finished: int = 0
    gaps: int = 0
    repeats: int = 0
    disorder: int = 0
    from_first: int = 0
    reconnects: int = 0
    records: int = 0
    rotated: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"flowd restarts: {self.kills} kills, {self.watchers} watchers "
            f"({self.finished} to the end, {self.from_first} from step 1, "
            f"{self.reconnects} reconnects), {self.records} records seen, {self.gaps} gaps, "
            f"{self.repeats} repeats, {self.disorder} out of order, "
            f"{self.rotated} workflows rotated"
        )

    def ok(self) -> bool:
        return (
            self.finished == self.watchers
            and not (self.gaps or self.repeats or self.disorder)
            and self.kills > 0
        )


def _judge(fig: Figures, watcher: Watcher, trace: Path) -> None:
    expected = [(r.run or "", r.step) for _, tail in read_parts(trace) for r in tail.records]
    got = watcher.got
    fig.records += len(got)
    label = f"watcher of {watcher.workflow_id}"
    if watcher.errors:
        fig.problems.append(f"{label}: {watcher.errors[0]}")
    if not got:
        fig.gaps += len(expected)
        fig.problems.append(f"{label}: nothing received")
        return
    if got[0] == expected[0]:
        fig.from_first += 1
    try:
        start = expected.index(got[0])
    except ValueError:
        fig.problems.append(f"{label}: first record {got[0]} not in the trace")
        fig.gaps += 1
        return
    want = expected[start:]
    repeats = len(got) - len(set(got))
    missing = len(set(want) - set(got))
    order = [item for item in dict.fromkeys(got) if item in set(want)]
    if repeats:
        fig.repeats += repeats
        fig.problems.append(f"{label}: {repeats} repeated records")
    if missing:
        fig.gaps += missing
        lost = sorted(set(want) - set(got), key=want.index)[:3]
        fig.problems.append(f"{label}: {missing} records missing, e.g. {lost}")
    if order != [item for item in want if item in set(got)]:
        fig.disorder += 1
        fig.problems.append(f"{label}: records out of order")


def run(kills: int, watchers: int, seed: int = 0) -> Figures:
    rng = random.Random(seed)
    fig = Figures(watchers=watchers)
    base = tempdir("fr")
    traces = base / "traces"
    traces.mkdir()
    daemon = Flowd([traces])
    writers: list[subprocess.Popen[bytes]] = []
    try:
        duration = 0.7 * kills + 1.5
        delay = 0.004
        steps = int(duration / (delay + 0.0015))
        deadline = time.monotonic() + duration + 60
        ids = [f"busy-{i}" for i in range(WORKFLOWS)]
        crowd = [Watcher(daemon.socket, ids[i % WORKFLOWS], deadline) for i in range(watchers)]
        for watcher in crowd:
            watcher.start()
        time.sleep(0.3)  # the watches are in before the workflows start: from the first record
        for workflow_id in ids:
            writers.append(
                subprocess.Popen(
                    [PY, "-c", WRITER, str(traces), workflow_id, str(steps), str(delay)],
                    env=env(),
                    stdout=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 0.5))
            daemon.kill()
            fig.kills += 1
            time.sleep(rng.uniform(0.0, 0.2))
            daemon.start()
        for writer in writers:
            if writer.wait(120) != 0:
                fig.problems.append(f"a writer exited {writer.returncode}")
        if any(writer.poll() is None for writer in writers):
            fig.problems.append("the workflows outlasted the kills")
        for watcher in crowd:
            watcher.join(max(0.0, deadline - time.monotonic()))
            fig.finished += watcher.done
            fig.reconnects += watcher.reconnects
            _judge(fig, watcher, traces / watcher.workflow_id / "trace.jsonl")
        fig.rotated = sum(len(list((traces / i).glob("trace.jsonl.*"))) > 0 for i in ids)
    finally:
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.kill()
            writer.wait()
        daemon.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return fig
