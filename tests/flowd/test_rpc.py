"""flowd's methods and errors over a real socket, against traces real doeff workflows
wrote (completed, failed, running, killed), found through the writers' registry."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doeff_flow_core import protocol
from tests.support.flowd import Flowd
from tests.support.procs import wait_for
from tests.support.rpc import Client
from tests.support.traces import raw_lines, records
from tests.support.workflows import finish, run_workflow_to_end, workflow


class World:
    def __init__(self, base: Path, root: Path, daemon: Flowd, running: subprocess.Popen[bytes]):
        self.base = base
        self.root = root
        self.daemon = daemon
        self.running = running

    def trace(self, workflow_id: str) -> Path:
        return self.root / workflow_id / "trace.jsonl"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("flowd-rpc")
    state = base / "state"
    root = base / "traces"
    env = {"XDG_STATE_HOME": str(state)}
    gate = base / "never"
    running = workflow(root, "wf-run", 5, gate=gate, hold=2, env=env)
    killed = workflow(root, "wf-lost", 5, gate=gate, hold=1, env=env)
    daemon: Flowd | None = None
    try:
        finish(workflow(root, "wf-a", 4, env=env))
        finish(workflow(root, "fail-b", 2, env=env), failing=True)
        for path, count in (("wf-run", 6), ("wf-lost", 3)):
            trace = root / path / "trace.jsonl"
            wait_for(lambda t=trace, c=count: t.exists() and len(records(t)) >= c, what=path)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        daemon = Flowd(state=state)  # no --root: everything comes from the registry
        yield World(base, root, daemon, running)
    finally:
        for proc in (running, killed):
            proc.kill()
            proc.communicate()
        if daemon is not None:
            daemon.cleanup()


@pytest.fixture
def client(world: World) -> Iterator[Client]:
    with world.daemon.client() as c:
        yield c


def test_ping(world: World, client: Client) -> None:
    result = client.call("ping")
    assert result["pid"] == world.daemon.proc.pid
    assert result["version"] == "0.1.0"
    assert result["workflows"] == 4
    assert result["roots"] == 1
    assert result["uptime"] >= 0


def test_ps_lists_every_workflow_with_its_derived_status_and_record_as_stored(
    world: World, client: Client
) -> None:
    listed = client.call("ps")["workflows"]
    assert [item["workflow_id"] for item in listed] == ["fail-b", "wf-a", "wf-lost", "wf-run"]
    status = {item["workflow_id"]: item["status"] for item in listed}
    assert status == {
        "fail-b": "failed",
        "wf-a": "completed",
        "wf-lost": "lost",
        "wf-run": "running",
    }
    for item in listed:
        assert item["root"] == os.path.realpath(world.root)
        assert item["problem"] is None
        assert item["record"] == records(world.trace(item["workflow_id"]))[-1]


def test_records_are_sent_byte_for_byte_as_stored(world: World, client: Client) -> None:
    client.send({"jsonrpc": "2.0", "id": "raw", "method": "get", "params": {"workflow_id": "wf-a"}})
    line = client.read_line()
    assert line is not None
    assert raw_lines(world.trace("wf-a"))[-1] in line


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("running", ["wf-run"]),
        ("lost", ["wf-lost"]),
        (["failed", "completed"], ["fail-b", "wf-a"]),
        ("unknown", []),
    ],
)
def test_ps_status_filter(client: Client, status: Any, expected: list[str]) -> None:
    listed = client.call("ps", status=status)["workflows"]
    assert [item["workflow_id"] for item in listed] == expected


def test_ps_root_filter(world: World, client: Client) -> None:
    mine = client.call("ps", root=str(world.root))["workflows"]
    assert len(mine) == 4
    assert client.call("ps", root="/nowhere")["workflows"] == []


def test_get(world: World, client: Client) -> None:
    summary = client.call("get", workflow_id="wf-run")
    assert summary["status"] == "running"
    assert summary["record"] == records(world.trace("wf-run"))[-1]
    assert summary["record"]["current_effect"].startswith("Put")
    same = client.call("get", workflow_id="wf-run", root=str(world.root))
    assert same == summary


def test_get_unknown_workflow(world: World, client: Client) -> None:
    error = client.error("get", {"workflow_id": "wf-none"})
    assert error["code"] == protocol.UNKNOWN_WORKFLOW == -32001
    assert error["data"]["workflow_id"] == "wf-none"
    error = client.error("get", {"workflow_id": "wf-a", "root": str(world.base)})
    assert error["code"] == -32001


def test_history(world: World, client: Client) -> None:
    stored = records(world.trace("wf-a"))
    result = client.call("history", workflow_id="wf-a", last=5)
    assert result["workflow_id"] == "wf-a"
    assert result["root"] == os.path.realpath(world.root)
    assert result["records"] == stored[-5:]
    assert client.call("history", workflow_id="wf-a")["records"] == stored[-10:]
    assert client.call("history", workflow_id="wf-a", last=10000)["records"] == stored


def test_history_of_an_unreadable_trace(tmp_path: Path, client: Client) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "wf-dir" / "trace.jsonl").mkdir(parents=True)  # a trace that is a directory
    assert client.call("roots.add", path=str(root))["added"] is True
    summary = client.call("get", workflow_id="wf-dir")
    assert summary["record"] is None
    assert summary["status"] is None
    assert summary["problem"] == "not a regular file (a directory)"
    error = client.error("history", {"workflow_id": "wf-dir"})
    assert error["code"] == protocol.TRACE_UNREADABLE == -32004


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', -32700),
        (b"\xff\xfe", -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "x": NaN}', -32700),
        (b"[1, 2]", -32600),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
        (b'"ping"', -32600),
        (b'{"id": 1, "method": "ping"}', -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', -32600),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": 3}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "shutdown"}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "__init__"}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "_entry"}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": 1}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get"}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "get", "params": {"workflow_id": 5}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"workflow_id":"../etc"}}', -32602),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"workflow_id":"a","root":"x"}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"history","params":{"workflow_id":"a","last":0}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"history","params":{"workflow_id":"a","last":10001}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"history","params":{"workflow_id":"a","last":true}}',
            -32602,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"ps","params":{"status":"sleeping"}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"ps","params":{"status":[1]}}', -32602),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"watch","params":{"after":{"run":"r","step":1}}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"watch","params":{"workflow_id":"a","after":{"step":"1"}}}',
            -32602,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"unwatch","params":{}}', -32602),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"unwatch","params":{"subscription":"s999999"}}',
            -32002,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"roots.add","params":{"path":"relative/dir"}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"roots.add","params":{"path":"/no/such/dir"}}', -32003),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"roots.add","params":{"path":"/etc/hostname"}}',
            -32003,
        ),
    ],
)
def test_every_bad_request_gets_its_error_and_the_connection_stays_usable(
    client: Client, line: bytes, code: int
) -> None:
    client.send_line(line)
    reply = client.read()
    assert reply["jsonrpc"] == "2.0"
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    if code == -32700:
        assert reply["id"] is None
    assert client.call("ping")["pid"] > 0


def test_error_responses_carry_the_request_id_when_it_has_one(client: Client) -> None:
    client.send({"jsonrpc": "1.0", "id": "abc", "method": "ping"})
    assert client.read()["id"] == "abc"
    client.send({"jsonrpc": "2.0", "id": 7.5, "method": "nope"})
    assert client.read()["id"] == 7.5


def test_requests_without_an_id_get_no_response(client: Client) -> None:
    client.send({"jsonrpc": "2.0", "method": "ping"})
    client.send({"jsonrpc": "2.0", "method": "no-such-method"})
    client.send({"jsonrpc": "2.0", "id": "second", "method": "ping"})
    assert client.read()["id"] == "second"


def test_blank_lines_are_ignored_and_pipelined_requests_answered_in_order(client: Client) -> None:
    batch = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping"}).encode() + b"\n\n"
        for i in range(50)
    )
    client.sock.sendall(batch)
    assert [client.read()["id"] for _ in range(50)] == list(range(50))


def test_roots_list_and_add(tmp_path: Path, world: World, client: Client) -> None:
    other = Path(os.path.realpath(tmp_path)) / "elsewhere"
    # written with a registry of its own, so only roots.add can tell flowd about it
    run_workflow_to_end(other, "wf-other", 1, env={"XDG_STATE_HOME": str(tmp_path / "s")})
    before = {root["path"]: root for root in client.call("roots.list")["roots"]}
    assert before[os.path.realpath(world.root)]["origin"] == "registry"
    assert str(other) not in before
    added = {"path": str(other), "added": True, "workflows": 1}
    assert client.call("roots.add", path=str(other)) == added
    assert client.call("roots.add", path=str(other) + "/") == {**added, "added": False}
    after = {root["path"]: root for root in client.call("roots.list")["roots"]}
    assert after[str(other)] == {
        "path": str(other),
        "origin": "rpc",
        "workflows": 1,
        "exists": True,
        "watch": "inotify",
    }
    summary = client.call("get", workflow_id="wf-other")
    assert summary["root"] == str(other)
    assert summary["status"] == "completed"


def test_a_line_over_one_mebibyte_is_refused_and_closed(world: World) -> None:
    with world.daemon.client() as client:
        client.sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n')
        client.sock.sendall(b" " * (1024 * 1024 + 10))
        assert client.read()["id"] == 1  # what came before is answered
        reply = client.read()
        assert reply["error"]["code"] == -32600
        assert reply["id"] is None
        assert client.read_line() is None
    with world.daemon.client() as other:
        assert other.call("ping")


def test_a_line_of_exactly_one_mebibyte_is_read(world: World) -> None:
    with world.daemon.client() as client:
        message = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
        client.sock.sendall(message + b" " * (1024 * 1024 - len(message)) + b"\n")
        assert client.read()["result"]["pid"] == world.daemon.proc.pid


def test_a_100_mb_line_gets_an_error_the_connection_closed_and_the_others_served(
    world: World,
) -> None:
    client = world.daemon.client()
    sent: list[BaseException] = []

    def flood() -> None:
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(100):
                client.sock.sendall(chunk)
            client.sock.sendall(b"\n")
        except OSError as exc:  # the daemon hung up, as it should
            sent.append(exc)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        reply = client.read()
        assert reply["error"]["code"] == -32600
        assert "line longer than" in reply["error"]["message"]
        thread.join(30)
        assert not thread.is_alive()
        assert sent, "the daemon read all 100 MB"
    finally:
        client.close()
    with world.daemon.client() as other:
        assert other.call("ping")["workflows"] >= 4
    assert world.daemon.rss_kib() < 200 * 1024
    assert "request line over 1048576 bytes; closed" in world.daemon.log()


def test_a_silent_client_costs_nothing_and_is_still_served(world: World) -> None:
    silent = [world.daemon.client() for _ in range(50)]
    try:
        cpu = world.daemon.cpu_seconds()
        with world.daemon.client() as other:
            for _ in range(20):
                assert other.call("ping")
        threading.Event().wait(1.0)
        assert world.daemon.cpu_seconds() - cpu < 0.5  # generous: idle is ~0
        for client in silent[:3]:
            assert client.call("ping")
    finally:
        for client in silent:
            client.close()


def test_hundreds_of_connections_at_once(world: World) -> None:
    clients = [world.daemon.client() for _ in range(500)]
    try:
        for number, client in enumerate(clients):
            client.send({"jsonrpc": "2.0", "id": number, "method": "ps", "params": {}})
        for number, client in enumerate(clients):
            reply = client.read()
            assert reply["id"] == number
            assert len(reply["result"]["workflows"]) >= 4
    finally:
        for client in clients:
            client.close()
    with world.daemon.client() as other:
        assert other.call("ping")


def connect_as_nobody(path: Path) -> str:
    """Fork a child that becomes uid 65534, connects, pings: what it saw."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        outcome = "error"
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            try:
                sock.connect(str(path))
                sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n')
                outcome = repr(sock.recv(1000))
            except PermissionError:
                outcome = "EACCES"
            except (ConnectionResetError, BrokenPipeError):
                outcome = "closed"  # the daemon hung up before the ping was sent or read
            except OSError as exc:
                outcome = type(exc).__name__
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_a_client_of_another_uid_is_refused(world: World) -> None:
    # the socket is 0600 in a 0700 directory: another user cannot even connect
    assert connect_as_nobody(world.daemon.socket) == "EACCES"
    # with the permissions opened, the peer-uid check still refuses it
    mode = world.daemon.dir.stat().st_mode
    os.chmod(world.daemon.dir, 0o755)
    os.chmod(world.daemon.socket, 0o666)
    try:
        assert connect_as_nobody(world.daemon.socket) in ("b''", "closed")
    finally:
        os.chmod(world.daemon.socket, 0o600)
        os.chmod(world.daemon.dir, mode)
    assert "uid 65534 is not this daemon's (0); closed" in world.daemon.log()
    with world.daemon.client() as client:
        assert client.call("ping")
