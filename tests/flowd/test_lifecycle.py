"""flowd starting and stopping: where its socket goes and with which permissions, a stale
socket replaced, a live one left alone, SIGTERM, and systemd's protocols without systemd
(a listening socket handed over as fd 3, a datagram NOTIFY_SOCKET, the watchdog)."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.flowd import Flowd, flowd, socket_dir
from tests.support.procs import PROJECT_ROOT, python_env, wait_for, wait_until
from tests.support.rpc import Client


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = socket_dir()
    yield path
    for item in sorted(path.rglob("*"), reverse=True):
        if item.is_dir() and not item.is_symlink():
            item.rmdir()
        else:
            item.unlink()
    path.rmdir()


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(20)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def until(self, state: str) -> list[str]:
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if message == state:
                return seen

    def close(self) -> None:
        self.sock.close()


def test_sigterm_stops_it_with_exit_code_0_and_its_socket_removed(tmp_path: Path) -> None:
    daemon = Flowd(state=tmp_path)
    assert daemon.socket.exists()
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    log = daemon.log()
    assert "SIGTERM: stopping" in log
    assert log.rstrip().endswith("flowd INFO stopped")


def test_the_socket_directory_is_0700_and_the_socket_0600(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "new" / "flowd.sock"
    with flowd(state=tmp_path, socket_path=path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(path.stat().st_mode)


@pytest.mark.parametrize("variable", ["DOEFF_FLOW_SOCKET", "XDG_RUNTIME_DIR"])
def test_the_default_socket_path(tmp_path: Path, short_dir: Path, variable: str) -> None:
    if variable == "DOEFF_FLOW_SOCKET":
        env = {variable: str(short_dir / "env.sock")}
        expected = short_dir / "env.sock"
    else:
        env = {variable: str(short_dir)}
        expected = short_dir / "doeff-flow" / "flowd.sock"
    env = {**env, "XDG_STATE_HOME": str(tmp_path)}
    if variable == "XDG_RUNTIME_DIR":
        env["DOEFF_FLOW_SOCKET"] = ""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowd"],
        env=python_env(env),
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )

    def listening() -> bool:  # bound (the file exists) comes before listening
        try:
            Client(expected, timeout=5).close()
        except OSError:
            return False
        return True

    try:
        assert wait_until(listening, 20), "no socket at the default path"
        with Client(expected) as client:
            assert client.call("ping")["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_a_stale_socket_file_is_replaced(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "flowd.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    assert path.exists()
    with flowd(state=tmp_path, socket_path=path) as daemon:
        with daemon.client() as client:
            assert client.call("ping")["pid"] == daemon.proc.pid
        assert f"replacing stale socket {path}" in daemon.log()


def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    with flowd(state=tmp_path) as first:
        inode = first.socket.stat().st_ino
        second = Flowd(state=tmp_path, socket_path=first.socket, wait=False)
        try:
            assert second.proc.wait(20) == 1
            lines = second.log().splitlines()
            assert lines[-1] == (
                f"flowd: {first.socket}: another flowd is answering on this socket; "
                "not taking it over"
            )
        finally:
            second.cleanup()
        assert first.socket.stat().st_ino == inode
        with first.client() as client:
            assert client.call("ping")["pid"] == first.proc.pid


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "flowd.sock"
    path.write_text("precious")
    daemon = Flowd(state=tmp_path, socket_path=path, wait=False)
    try:
        assert daemon.proc.wait(20) == 1
        assert "exists and is not a socket; not removing it" in daemon.log()
    finally:
        daemon.cleanup()
    assert path.read_text() == "precious"


def test_a_socket_path_too_long_is_one_line_and_exit_1(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / ("x" * 120)
    daemon = Flowd(state=tmp_path, socket_path=path, wait=False)
    try:
        assert daemon.proc.wait(20) == 1
        lines = daemon.log().splitlines()
        assert lines[-1].startswith(f"flowd: {path}: cannot listen: ")
        assert "Traceback" not in daemon.log()
    finally:
        daemon.cleanup()


def test_ready_then_stopping_over_notify_socket_and_no_watchdog_unless_asked(
    tmp_path: Path, short_dir: Path
) -> None:
    notify = Notifications(short_dir / "notify")
    try:
        daemon = Flowd(state=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)}, wait=False)
        assert notify.next() == "READY=1"
        with daemon.client() as client:  # ready means answering
            assert client.call("ping")["pid"] == daemon.proc.pid
        daemon.proc.send_signal(signal.SIGTERM)
        assert notify.next() == "STOPPING=1"
        # It stops on that one SIGTERM (a second, sent while it stops, would end it).
        assert daemon.proc.wait(20) == 0
    finally:
        notify.close()


SPAWN = r"""
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "flowd", *sys.argv[2:]])
"""


def test_socket_activation_with_notify_and_watchdog(tmp_path: Path, short_dir: Path) -> None:
    """As systemd does it: the socket bound and listening before flowd starts, handed
    over as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to flowd's own pid."""
    path = short_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    notify = Notifications(short_dir / "notify")
    env = {
        "XDG_STATE_HOME": str(tmp_path),
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "200000",
    }
    # connected before flowd even runs: the kernel queues it, as with systemd
    early = Client(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", SPAWN, str(listener.fileno()), "--log-level", "debug"],
        env=python_env(env),
        pass_fds=(listener.fileno(),),
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    listener.close()
    try:
        assert notify.next() == "READY=1"
        assert early.call("ping")["pid"] == proc.pid
        early.close()
        watchdogs = notify.until("WATCHDOG=1") + notify.until("WATCHDOG=1")
        assert set(watchdogs) == {"WATCHDOG=1"}
        with Client(path) as client:
            assert client.call("roots.list") == {"roots": []}
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.until("STOPPING=1")
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert "listening on the inherited socket" in err.decode()
        assert path.exists()  # systemd's socket: flowd does not remove it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()


def test_listen_fds_for_another_process_is_ignored(tmp_path: Path) -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    with flowd(state=tmp_path, env=env) as daemon:
        with daemon.client() as client:
            assert client.call("ping")["pid"] == daemon.proc.pid
        wait_for(lambda: "not this one; ignoring it" in daemon.log(), what="the log line")
