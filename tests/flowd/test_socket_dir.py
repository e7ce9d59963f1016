"""flowd listens only in a socket directory of its own: a real directory (not a symbolic
link) owned by its user, mode 0700. Anything else stops it before it creates a file, with
one line on stderr and exit 1; its lock file is never a link or anything but a regular
file."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowd.cli import START_FAILED
from tests.support.flowd import Flowd, flowd, socket_dir

NOBODY = 65534


@pytest.fixture
def short() -> Iterator[Path]:
    path = socket_dir("sd")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def refused(state: Path, sock: Path) -> str:
    """flowd on ``sock`` exits with START_FAILED; its one line of complaint."""
    daemon = Flowd(state=state, socket_path=sock, wait=False)
    try:
        assert daemon.proc.wait(20) == START_FAILED, daemon.log()
        log = daemon.log()
    finally:
        daemon.cleanup()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.startswith("flowd: ")]
    assert len(lines) == 1, log
    return lines[0]


def test_a_symbolic_link_to_a_shared_directory_is_refused(tmp_path: Path, short: Path) -> None:
    shared = short / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone may create files there
    link = short / "doeff-flow-0"
    link.symlink_to(shared)
    line = refused(tmp_path, link / "flowd.sock")
    assert (
        line
        == f"flowd: socket directory {link}: a symbolic link (not followed); not listening there"
    )
    assert list(shared.iterdir()) == []  # no lock, no socket where the link led


def test_a_directory_open_to_others_is_refused(tmp_path: Path, short: Path) -> None:
    run = short / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    line = refused(tmp_path, run / "flowd.sock")
    assert "mode 0755" in line and str(run) in line
    assert list(run.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's directory")
def test_a_directory_of_another_user_is_refused(tmp_path: Path, short: Path) -> None:
    theirs = short / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    line = refused(tmp_path, theirs / "flowd.sock")
    assert f"owned by uid {NOBODY}, not {os.geteuid()}" in line
    assert list(theirs.iterdir()) == []


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path: Path, short: Path) -> None:
    run = short / "run"
    run.mkdir(mode=0o700)
    target = short / "chosen"  # where the link would have flowd create a file
    (run / "flowd.sock.lock").symlink_to(target)
    line = refused(tmp_path, run / "flowd.sock")
    assert "flowd.sock.lock: a symbolic link (not followed)" in line
    assert not target.exists()


def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, short: Path) -> None:
    run = short / "run"
    run.mkdir(mode=0o700)
    os.mkfifo(run / "flowd.sock.lock")
    line = refused(tmp_path, run / "flowd.sock")
    assert "flowd.sock.lock: not a regular file (a FIFO)" in line


def test_a_directory_it_makes_is_private_and_used(tmp_path: Path, short: Path) -> None:
    sock = short / "runtime" / "doeff-flow" / "flowd.sock"
    with flowd(state=tmp_path, socket_path=sock) as daemon:
        info = os.lstat(sock.parent)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid()
        lock = os.lstat(f"{sock}.lock")
        assert stat.S_ISREG(lock.st_mode) and stat.S_IMODE(lock.st_mode) == 0o600
        with daemon.client() as client:
            assert client.call("ping")["pid"] == daemon.pid


def test_once_the_directory_is_fixed_flowd_starts(tmp_path: Path, short: Path) -> None:
    run = short / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    assert "mode 0755" in refused(tmp_path, run / "flowd.sock")
    run.chmod(0o700)
    with flowd(state=tmp_path, socket_path=run / "flowd.sock") as daemon, daemon.client() as c:
        assert c.call("ping")["pid"] == daemon.pid
