"""A server that is not flowd, on a Unix socket: what a spoofing local user would run.

``python -m tests.support.fakeflowd SOCKET LOG [--uid N] [--socket-mode M] [--huge BYTES]
[--workflows N --record-bytes B]`` binds SOCKET, switches to uid N (before ``listen``, so
``SO_PEERCRED`` names N), prints ``ready`` and answers each request line as flowd would
(``ping``, ``ps`` with one workflow named ``spoofed-wf`` or ``--workflows`` made-up ones,
``{}`` for anything else). Every line it receives is appended to LOG (``line <bytes>``),
and with ``--huge`` the first request is answered with one line of BYTES bytes, written a
MiB at a time (never held whole) until the client hangs up (``sent <bytes>`` in LOG);
with ``--flood`` a request other than ``ping`` is never answered: ``trace``
notifications follow, endlessly, until the client hangs up (``sent <bytes>`` too).

``FakeFlowd`` runs it as a subprocess for the tests and the fault suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.procs import PROJECT_ROOT, python_env

SPOOFED_ID = "spoofed-wf"
CHUNK = 1 << 20


def _summary(workflow_id: str, record_bytes: int) -> bytes:
    record = {
        "workflow_id": workflow_id,
        "step": 3,
        "status": "completed",
        "current_effect": None,
        "trace": [],
        "started_at": "2026-01-01T12:00:00+00:00",
        "updated_at": "2026-01-01T12:00:01+00:00",
        "error": None,
        "result": "x" * max(0, record_bytes - 220),
    }
    summary = {
        "workflow_id": workflow_id,
        "root": "/srv/spoofed/traces",
        "status": "completed",
        "record": record,
        "problem": None,
    }
    return json.dumps(summary, separators=(",", ":")).encode()


def _ps(workflows: int, record_bytes: int) -> bytes:
    if workflows == 0:
        return b'{"workflows":[' + _summary(SPOOFED_ID, 300) + b"]}"
    items = b",".join(_summary(f"wf-{n:06d}", record_bytes) for n in range(workflows))
    return b'{"workflows":[' + items + b"]}"


class _Log:
    """The log, opened before the server gives up root (it may not reach it afterwards)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the server's life
        self._lock = threading.Lock()

    def note(self, text: str) -> None:
        with self._lock:
            self._file.write(text + "\n")


class _Session:
    def __init__(self, conn: socket.socket, args: argparse.Namespace, log: _Log) -> None:
        self.conn = conn
        self.args = args
        self.note = log.note

    def run(self) -> None:
        buffer = b""
        with self.conn:
            while True:
                try:
                    data = self.conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.note(f"line {len(line)} {line[:200]!r}")
                    if not self.answer(line):
                        return

    def answer(self, line: bytes) -> bool:
        try:
            request = json.loads(line)
            ident, method = request.get("id"), request.get("method")
        except (ValueError, AttributeError):
            return True
        if self.args.huge:
            self.stream_huge(ident)
            return False
        if self.args.flood and method != "ping":
            self.flood()
            return False
        if method == "ping":
            result = json.dumps({"pid": os.getpid(), "version": "0"}).encode()
        elif method == "ps":
            result = _ps(self.args.workflows, self.args.record_bytes)
        else:
            result = b"{}"
        message = b'{"jsonrpc":"2.0","id":' + json.dumps(ident).encode() + b',"result":'
        try:
            self.conn.sendall(message + result + b"}\n")
        except OSError:
            return False
        return True

    def flood(self) -> None:
        record = {"workflow_id": SPOOFED_ID, "step": 1, "status": "running"}
        params = {"subscription": "s1", "workflow_id": SPOOFED_ID, "record": record}
        line = json.dumps({"jsonrpc": "2.0", "method": "trace", "params": params}) + "\n"
        chunk = line.encode() * max(1, CHUNK // len(line))
        sent = 0
        try:
            while True:
                self.conn.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        self.note(f"sent {sent}")

    def stream_huge(self, ident: object) -> None:
        head = b'{"jsonrpc":"2.0","id":' + json.dumps(ident).encode() + b',"result":"'
        chunk = b"x" * CHUNK
        sent = 0
        try:
            self.conn.sendall(head)
            sent = len(head)
            while sent < self.args.huge:
                self.conn.sendall(chunk)
                sent += CHUNK
            self.conn.sendall(b'"}\n')
            sent += 3
        except OSError:
            pass
        self.note(f"sent {sent}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fakeflowd")
    parser.add_argument("socket")
    parser.add_argument("log")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--socket-mode", type=lambda text: int(text, 8))
    parser.add_argument("--huge", type=int, default=0)
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--workflows", type=int, default=0)
    parser.add_argument("--record-bytes", type=int, default=700)
    args = parser.parse_args(argv)
    log = _Log(args.log)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(args.socket)
    if args.socket_mode is not None:
        os.chmod(args.socket, args.socket_mode)
    if args.uid is not None:  # before listen: the peer credentials a client sees are these
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)
    server.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        log.note("accepted")
        session = _Session(conn, args, log)
        threading.Thread(target=session.run, daemon=True).start()


class FakeFlowd:
    """The fake server as a subprocess; ``received`` are the request lines it was sent."""

    def __init__(self, socket_path: Path, log: Path, *args: object) -> None:
        self.socket = socket_path
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fakeflowd", str(socket_path), str(log)]
            + [str(arg) for arg in args],
            env=python_env(),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"the fake server did not start: {err}")

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def received(self) -> list[str]:
        return [line for line in self.lines() if line.startswith("line ")]

    def accepted(self) -> int:
        return self.lines().count("accepted")

    def sent(self) -> int:
        return sum(int(line.split()[1]) for line in self.lines() if line.startswith("sent "))

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate()
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> FakeFlowd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
