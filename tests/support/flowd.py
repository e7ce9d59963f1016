"""flowd as a subprocess on a real socket under /tmp, for the tests, the fault suite and
the benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.procs import PROJECT_ROOT, python_env, wait_until
from tests.support.rpc import Client


def socket_dir(prefix: str = "fd") -> Path:
    """A short private directory for a socket (AF_UNIX paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Flowd:
    """``python -m flowd ARGS`` on a socket under /tmp, its log in a file there.

    ``state`` is its ``$XDG_STATE_HOME`` (default: a directory beside the socket); ``env``
    adds to its environment. Unless ``wait`` is false, it is started and answers a ping
    before the constructor returns (RuntimeError when it does not within
    ``ready_timeout`` seconds). ``kill`` or ``stop`` it, ``start`` it again (a new log
    file: ``log`` joins them, unless ``log_path`` names the one file its stderr goes to);
    ``cleanup`` stops it and removes its directory.
    """

    def __init__(
        self,
        *args: object,
        state: Path | None = None,
        socket_path: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        ready_timeout: float = 20,
        log_path: Path | None = None,
    ) -> None:
        self.dir = socket_dir()
        self.socket = socket_path or self.dir / "flowd.sock"
        self.state = state if state is not None else self.dir / "state"
        self.args = [str(arg) for arg in args]
        self.env = {"XDG_STATE_HOME": str(self.state), **(env or {})}
        self.ready_timeout = ready_timeout
        self._fixed_log = log_path
        self._final_log: str | None = None  # the log once its directory is removed
        try:
            self.start(wait)
        except BaseException:
            self.cleanup()
            raise

    def start(self, wait: bool = True) -> None:
        self.log_path = self._fixed_log or self.dir / f"flowd-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flowd", "--socket", str(self.socket), *self.args],
                env=python_env(self.env),
                cwd=PROJECT_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        if wait:
            self.wait_ready(self.ready_timeout)

    def answers(self) -> bool:
        """Whether flowd answers a ping now; RuntimeError when it has exited."""
        if not self.alive():
            raise RuntimeError(f"flowd exited {self.proc.returncode}: {self.log()}")
        try:
            with Client(self.socket, timeout=5) as client:
                return "result" in client.request("ping")
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20) -> None:
        if not wait_until(self.answers, timeout, 0.02):
            raise RuntimeError(f"flowd never answered: {self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def client(self) -> Client:
        return Client(self.socket)

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        if self._fixed_log is not None:
            return self._fixed_log.read_text(errors="replace")
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    def tracebacks(self) -> int:
        return self.log().count("Traceback (most recent call last)")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def cleanup(self) -> None:
        if hasattr(self, "proc"):
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


def summary_of(client: Client, workflow_id: str, **params: Any) -> dict[str, Any] | None:
    reply = client.request("get", {"workflow_id": workflow_id, **params})
    return reply.get("result")


def now() -> float:
    return time.monotonic()
