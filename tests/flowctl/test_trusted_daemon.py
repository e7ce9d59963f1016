"""flowctl talks only to a daemon it can trust: the socket's directory is a real directory
of this user's, closed to everyone else, and the server's uid (SO_PEERCRED) is this
user's or root's. A server anywhere else is never sent a request: flowctl says so in one
line and reads the trace files. An answer line over the bound is dropped while it is
read, never held whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from doeff_flow_core.locations import check_socket_dir
from flowctl import exitcodes
from flowctl.sources.rpc import KEPT_BYTES, MAX_LINE
from tests.support.fakeflowd import SPOOFED_ID, FakeFlowd
from tests.support.flowctl import flowctl, flowctl_command
from tests.support.flowd import Flowd, socket_dir
from tests.support.procs import python_env, run_peak
from tests.support.traces import put_trace, record_line

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play another user")


class Place:
    """A short directory under /tmp: a runtime directory, the trace files, the logs."""

    def __init__(self) -> None:
        self.base = socket_dir("tr")
        self.runtime = self.base / "run"
        self.runtime.mkdir(mode=0o700)
        self.sock_dir = self.runtime / "doeff-flow"
        self.socket = self.sock_dir / "flowd.sock"
        self.traces = self.base / "traces"
        put_trace(self.traces, "wf-real", record_line("wf-real", 4, status="completed"))

    def env(self) -> dict[str, str]:
        """The default socket path: ``$XDG_RUNTIME_DIR/doeff-flow/flowd.sock``."""
        return {"XDG_RUNTIME_DIR": str(self.runtime), "DOEFF_FLOW_SOCKET": ""}

    def fake(self, *args: object) -> FakeFlowd:
        return FakeFlowd(self.socket, self.base / "fake.log", *args)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def place() -> Iterator[Place]:
    made = Place()
    yield made
    made.close()


def ps(place: Place, *args: object) -> subprocess.CompletedProcess[str]:
    return flowctl("--trace-dir", place.traces, *args, "ps", env=place.env())


def assert_files_read_and_said_once(done: subprocess.CompletedProcess[str], why: str) -> None:
    """The trace files' workflow, nothing of the server's, one line on stderr naming why."""
    assert done.returncode == 0, done.stderr
    assert "wf-real" in done.stdout and SPOOFED_ID not in done.stdout, done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flowctl: ") and why in lines[0], lines[0]
    assert "reading trace files" in lines[0], lines[0]


@as_root
def test_a_socket_directory_of_another_user_is_never_used(place: Place) -> None:
    # another user made the directory first (mkdir -m700) and serves in it
    place.sock_dir.mkdir(mode=0o700)
    with place.fake() as fake:
        os.chown(place.sock_dir, NOBODY, NOBODY)
        done = ps(place)
        assert_files_read_and_said_once(done, f"owned by uid {NOBODY}, not 0")
        assert fake.received() == []


def test_a_socket_directory_open_to_others_is_never_used(place: Place) -> None:
    place.sock_dir.mkdir(mode=0o700)
    with place.fake() as fake:
        place.sock_dir.chmod(0o755)
        done = ps(place)
        assert_files_read_and_said_once(done, "mode 0755")
        assert fake.received() == []
        # the same through --socket: the directory is checked however the path is named
        named = flowctl("--socket", place.socket, "--trace-dir", place.traces, "ps")
        assert_files_read_and_said_once(named, "mode 0755")
        assert fake.received() == []


def test_a_socket_directory_that_is_a_symbolic_link_is_never_followed(place: Place) -> None:
    elsewhere = socket_dir("tl")  # 0700, this user's: only the link is wrong
    try:
        place.sock_dir.symlink_to(elsewhere)
        with place.fake() as fake:
            done = ps(place)
            assert_files_read_and_said_once(done, "a symbolic link")
            assert fake.received() == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


@as_root
def test_a_server_of_another_uid_is_never_sent_a_request(place: Place) -> None:
    # the directory is right; the server bound there, then became another user
    place.sock_dir.mkdir(mode=0o700)
    with place.fake("--uid", NOBODY, "--socket-mode", "777") as fake:
        done = ps(place)
        assert_files_read_and_said_once(done, f"served by uid {NOBODY}")
        assert fake.accepted() >= 1  # it was reached, and hung up on before any request
        assert fake.received() == []


def test_the_real_flowd_in_a_private_directory_is_used(place: Place) -> None:
    place.sock_dir.mkdir(mode=0o700)
    daemon = Flowd("--root", place.traces, state=place.base / "state", socket_path=place.socket)
    try:
        done = flowctl("--trace-dir", place.traces, "-v", "ps", env=place.env())
        assert done.returncode == 0, done.stderr
        assert "wf-real" in done.stdout
        assert f"reading through flowd (pid {daemon.pid})" in done.stderr
        quiet = flowctl("--trace-dir", place.traces, "ps", env=place.env())
        assert quiet.stderr == ""
    finally:
        daemon.cleanup()


def test_no_socket_at_all_is_still_quiet(place: Place) -> None:
    place.sock_dir.mkdir(mode=0o755)  # unsafe, but nothing listens there: nothing to say
    done = ps(place)
    assert done.returncode == 0 and "wf-real" in done.stdout
    assert done.stderr == ""


def test_a_900_mb_answer_line_is_dropped_at_the_bound_with_bounded_memory(place: Place) -> None:
    place.sock_dir.mkdir(mode=0o700)  # a server flowctl trusts, that answers absurdly
    with place.fake("--huge", 900 << 20) as fake:
        command = flowctl_command("--trace-dir", place.traces, "ps")
        code, out, err, peak_kib = run_peak(command, python_env(place.env()), place.base)
        assert code == 0, err
        assert out.split()[0] == "wf-real"
        lines = err.splitlines()
        assert len(lines) == 1 and f"more than {MAX_LINE >> 20} MiB in one line" in lines[0], err
        assert "reading trace files" in lines[0]
        # read up to the bound and no further: the server could not send it all
        assert fake.sent() < MAX_LINE + (16 << 20), fake.sent()
    assert peak_kib < (MAX_LINE >> 10) * 1.25 + 100_000, f"peak RSS {peak_kib} KiB"


def test_notifications_instead_of_an_answer_are_dropped_at_their_bound(place: Place) -> None:
    place.sock_dir.mkdir(mode=0o700)  # a trusted server that pings, then only pushes
    with place.fake("--flood") as fake:
        command = flowctl_command("--trace-dir", place.traces, "ps")
        code, _, err, peak_kib = run_peak(command, python_env(place.env()), place.base)
        assert code == exitcodes.UNAVAILABLE, err
        bound = f"more than {KEPT_BYTES >> 20} MiB in notifications before roots.add"
        assert err.count("\n") == 1 and err.startswith("flowctl: ") and bound in err, err
        assert fake.sent() < KEPT_BYTES + (16 << 20), fake.sent()
    assert peak_kib < 200_000, f"peak RSS {peak_kib} KiB"


def test_the_socket_directory_check(place: Place) -> None:
    uid = os.geteuid()
    place.sock_dir.mkdir(mode=0o700)
    assert check_socket_dir(place.sock_dir, uid).st_ino == place.sock_dir.stat().st_ino
    with pytest.raises(OSError, match="owned by uid"):
        check_socket_dir(place.sock_dir, uid + 1)
    place.sock_dir.chmod(0o710)
    with pytest.raises(OSError, match="mode 0710"):
        check_socket_dir(place.sock_dir, uid)
    with pytest.raises(OSError, match="not a directory"):
        check_socket_dir(place.traces / "wf-real" / "trace.jsonl", uid)
    link = place.base / "link"
    link.symlink_to(tempfile.gettempdir())
    with pytest.raises(OSError, match="symbolic link"):
        check_socket_dir(link, uid)
    with pytest.raises(FileNotFoundError):
        check_socket_dir(place.base / "missing", uid)
