"""Shared helpers of the fault suite: the project on the path, flowd as a subprocess, a
plain JSON-lines socket client, RSS, and reading every part of a trace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from doeff_flow_core.tracefiles.reading import Tail, read_all  # noqa: E402

PY = sys.executable
# The suite's own state and runtime directories: workers register their trace directories
# there, not in the user's registry, and flowctl never finds a flowd it did not start.
PRIVATE = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment with the project first on PYTHONPATH."""
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), result.get("PYTHONPATH")]))
    result["PYTHONUNBUFFERED"] = "1"
    result["XDG_STATE_HOME"] = str(PRIVATE / "state")
    result["XDG_RUNTIME_DIR"] = str(PRIVATE / "run")
    result["DOEFF_FLOW_SOCKET"] = str(PRIVATE / "run" / "none.sock")
    result.update(extra or {})
    return result


def tempdir(prefix: str) -> Path:
    """A short directory under /tmp (socket paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parts(trace: Path) -> list[Path]:
    """A trace's files, oldest first: trace.jsonl.N ... trace.jsonl.1, trace.jsonl."""
    rotated = []
    for path in trace.parent.glob(trace.name + ".*"):
        suffix = path.name[len(trace.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    rotated.sort(reverse=True)
    found = [path for _, path in rotated]
    if trace.exists():
        found.append(trace)
    return found


def read_parts(trace: Path) -> list[tuple[Path, Tail]]:
    return [(path, read_all(path)) for path in parts(trace)]


class Client:
    """A plain socket client: JSON lines out, JSON lines in."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""
        self.next_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: object) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def read_line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def read(self) -> dict[str, Any] | None:
        line = self.read_line()
        return None if line is None else json.loads(line)

    def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """The response to one request; notifications meanwhile are dropped."""
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        while True:
            reply = self.read()
            if reply is None:
                raise ConnectionError("flowd closed the connection")
            if reply.get("id") == self.next_id:
                return reply


class Flowd:
    """``python -m flowd`` on a socket under /tmp, with its log in a file."""

    def __init__(
        self, roots: list[Path], socket_path: Path | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.dir = tempdir("ff")
        self.socket = socket_path or self.dir / "flowd.sock"
        self.roots = roots
        self.extra = list(extra)
        self.state = self.dir / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [PY, "-m", "flowd", "--socket", str(self.socket)]
        for root in self.roots:
            args += ["--root", str(root)]
        args += self.extra
        self.log_path = self.dir / f"flowd-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                env=env({"XDG_STATE_HOME": str(self.state)}),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        if not wait_until(self.answers, 30, 0.02):
            raise RuntimeError(f"flowd never answered: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"flowd exited: {self.log()}")
        try:
            with Client(self.socket, timeout=5) as client:
                return "result" in client.request("ping")
        except OSError:
            return False

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    def tracebacks(self) -> int:
        return self.log().count("Traceback (most recent call last)")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        code = -1
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        return code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
