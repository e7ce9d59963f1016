"""Helpers for the flowd tests (no tests here): the real daemon as a subprocess on a
real socket under /tmp, a plain socket client speaking the protocol, and real doeff
workflows writing traces in subprocesses."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import PROJECT_ROOT, python_command, python_env, wait_until

# A workflow of N steps (slog, Get, Put each), DELAY seconds apart; with a GATE path it
# stops after step HOLD until that file exists (blocked, still running). An id starting
# with "fail" raises at the end.
#   argv: trace_dir workflow_id steps delay [gate hold]
PROGRAM = r"""
import os, sys, time
from doeff import Get, Put, do, slog
from doeff_flow_core import run_workflow

trace_dir, workflow_id = sys.argv[1], sys.argv[2]
steps, delay = int(sys.argv[3]), float(sys.argv[4])
gate = sys.argv[5] if len(sys.argv) > 5 else None
hold = int(sys.argv[6]) if len(sys.argv) > 6 else 0

@do
def tick(i):
    yield slog("tick", i=i)
    count = yield Get("count")
    yield Put("count", (count or 0) + 1)
    return i

@do
def flow():
    for i in range(steps):
        yield tick(i)
        time.sleep(delay)
        if gate is not None and i + 1 == hold:
            while not os.path.exists(gate):
                time.sleep(0.01)
    if workflow_id.startswith("fail"):
        raise ValueError(f"{workflow_id} failed on purpose")
    return steps

result = run_workflow(flow(), workflow_id, trace_dir)
sys.exit(0 if result.is_ok() else 1)
"""
RECORDS_PER_STEP = 3  # slog, Get, Put; plus one terminal record per run


def socket_dir() -> Path:
    """A short private directory for a socket (AF_UNIX paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix="fd", dir="/tmp"))


def workflow(
    trace_dir: Path,
    workflow_id: str,
    steps: int = 3,
    delay: float = 0.0,
    gate: Path | None = None,
    hold: int = 0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start the workflow program; the caller waits (or ``run_workflow_to_end``)."""
    args: list[object] = [trace_dir, workflow_id, steps, delay]
    if gate is not None:
        args += [gate, hold]
    return subprocess.Popen(
        python_command(PROGRAM, args),
        env=python_env(env),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_workflow_to_end(trace_dir: Path, workflow_id: str, steps: int = 3, **kw: Any) -> None:
    proc = workflow(trace_dir, workflow_id, steps, **kw)
    finish(proc, failing=workflow_id.startswith("fail"))


def finish(proc: subprocess.Popen[bytes], failing: bool = False) -> None:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (1 if failing else 0), err.decode()


def records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a trace, parsed (lines end at \\n only)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def raw_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def steps_of(items: list[dict[str, Any]]) -> list[int]:
    return [item["step"] for item in items]


class Client:
    """A plain socket client: JSON lines out, JSON lines in."""

    _ids = itertools.count(1)

    def __init__(self, path: Path, timeout: float = 20) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buffer = b""
        self.notifications: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def send(self, message: object) -> None:
        self.send_line(json.dumps(message).encode())

    def read_line(self) -> bytes | None:
        """The next line from the daemon, or None when it closed the connection."""
        while b"\n" not in self._buffer:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read(self) -> dict[str, Any]:
        line = self.read_line()
        assert line is not None, "the daemon closed the connection"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """The whole response (result or error); notifications meanwhile are kept."""
        ident = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        while True:
            reply = self.read()
            if reply.get("method") == "trace":
                self.notifications.append(reply)
                continue
            assert reply.get("id") == ident, reply
            return reply

    def call(self, method: str, **params: Any) -> Any:
        """The result; AssertionError on an error response."""
        reply = self.request(method, params or None)
        assert "result" in reply, reply
        return reply["result"]

    def error(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = self.request(method, params)
        assert "error" in reply, reply
        error = reply["error"]
        assert isinstance(error, dict)
        return error

    def trace(self) -> dict[str, Any]:
        """The next ``trace`` notification's params."""
        if self.notifications:
            return self.notifications.pop(0)["params"]  # type: ignore[no-any-return]
        message = self.read()
        assert message.get("method") == "trace", message
        params = message["params"]
        assert isinstance(params, dict)
        return params

    def traces_until(self, workflow_id: str, status: str = "completed") -> list[dict[str, Any]]:
        """Notifications' params up to and including ``workflow_id``'s ``status`` record."""
        got = []
        while True:
            params = self.trace()
            got.append(params)
            if params["workflow_id"] == workflow_id and params["record"]["status"] == status:
                return got


class Flowd:
    """``python -m flowd`` running on a socket under /tmp; stopped by ``stop``."""

    def __init__(
        self,
        *args: object,
        state: Path,
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        self.dir = socket_dir()
        self.socket = socket_path or self.dir / "flowd.sock"
        self.state = state
        self.log_path = self.dir / "flowd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop
        self._final_log: str | None = None  # the log once its directory is removed
        extra = {"XDG_STATE_HOME": str(state), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowd", "--socket", str(self.socket), *map(str, args)],
            env=python_env(extra),
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.cleanup()
                raise

    def wait_ready(self, timeout: float = 20) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"flowd exited {self.proc.returncode}: {self.log()}")
            try:
                with Client(self.socket, timeout=5) as client:
                    return bool(client.call("ping"))
            except OSError:
                return False

        assert wait_until(answers, timeout, 0.02), f"flowd never answered: {self.log()}"

    def client(self) -> Client:
        return Client(self.socket)

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def cleanup(self) -> None:
        self.stop()
        self._final_log = self.log()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def flowd(*args: object, state: Path, **kw: Any) -> Iterator[Flowd]:
    daemon = Flowd(*args, state=state, **kw)
    try:
        yield daemon
    finally:
        daemon.cleanup()


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    value = wait_until(predicate, timeout, 0.01)
    assert value, f"timed out waiting for {what}"
    return value


def summary_of(client: Client, workflow_id: str, **params: Any) -> dict[str, Any] | None:
    reply = client.request("get", {"workflow_id": workflow_id, **params})
    return reply.get("result")


def now() -> float:
    return time.monotonic()
