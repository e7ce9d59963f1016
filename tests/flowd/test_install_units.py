"""``flowd install-units``: the units it writes name the flowd that ran it by its absolute
path, and systemd accepts them (``systemd-analyze verify``, where it is installed); the
shipped units are the same text; existing units are kept unless ``--force``; and the
written service, started the way systemd starts it (``systemd-socket-activate``), answers.
There is no systemd user instance in a container, so the units are not enabled here."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowd.errors import UnitPathUnusable
from flowd.units import SERVICE_UNIT, SHIPPED_EXEC_START, SOCKET_UNIT, exec_line, unit_texts
from tests.support.flowd import socket_dir
from tests.support.procs import PROJECT_ROOT, run_command, wait_until
from tests.support.rpc import Client

FLOWD = Path(sys.executable).parent / "flowd"  # the console script of this environment
ANALYZE = shutil.which("systemd-analyze")
needs_script = pytest.mark.skipif(not FLOWD.exists(), reason="no flowd console script here")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze (apt: systemd)")
UNITS = (SOCKET_UNIT, SERVICE_UNIT)


@pytest.fixture
def short() -> Iterator[Path]:
    """A short private directory (systemd-analyze's runtime directory holds sockets)."""
    path = socket_dir("iu")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def install(
    home: Path, *args: str, program: Path = FLOWD, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``program install-units ARGS`` with ``home`` as its home and config directory."""
    environ = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), **(env or {})}
    return run_command([str(program), "install-units", *args], env=environ)


def exec_start(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def verify(units: Path, short: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze --user verify`` on the units in ``units``, as a user whose home is
    ``home``."""
    assert ANALYZE is not None
    runtime = short / "rt"
    runtime.mkdir(mode=0o700, exist_ok=True)
    environ = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    paths = [str(units / name) for name in UNITS]
    return run_command([ANALYZE, "--user", "verify", *paths], env=environ)


# -- the text -----------------------------------------------------------------------------


def test_the_shipped_units_are_the_generated_ones() -> None:
    for name, text in unit_texts(SHIPPED_EXEC_START).items():
        assert (PROJECT_ROOT / "systemd" / name).read_text() == text
    shipped = (PROJECT_ROOT / "systemd" / SERVICE_UNIT).read_text()
    assert exec_start(shipped) == "%h/.local/bin/flowd"
    assert "flowd install-units" in shipped  # says how to adapt it


def test_exec_start_quotes_what_systemd_would_split_or_expand() -> None:
    assert exec_line(["/opt/flowd/bin/flowd"]) == "/opt/flowd/bin/flowd"
    assert exec_line(["/usr/bin/python3", "-P", "-m", "flowd"]) == "/usr/bin/python3 -P -m flowd"
    assert exec_line(["/a b/100%$x/flowd"]) == '"/a b/100%%$x/flowd"'
    assert exec_line(["/f", 'a"\\']) == '/f "a\\"\\\\"'
    assert exec_line(["/bin/flowd", "--root", "/d/$x y"]) == '/bin/flowd --root "/d/$$x y"'
    with pytest.raises(UnitPathUnusable, match="quote"):
        exec_line(['/a"b/flowd'])  # systemd refuses such a program path, quoted or not
    with pytest.raises(UnitPathUnusable, match="control"):
        exec_line(["/a\nb/flowd"])


# -- writing them -------------------------------------------------------------------------


@needs_script
def test_install_units_writes_units_that_run_this_flowd(tmp_path: Path) -> None:
    done = install(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    units = tmp_path / "config" / "systemd" / "user"  # $XDG_CONFIG_HOME honoured
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    written = {name: (units / name).read_text() for name in UNITS}
    assert exec_start(written[SERVICE_UNIT]) == str(FLOWD)
    # the same text as the shipped units, but for the path
    assert written == unit_texts(str(FLOWD))
    for name in UNITS:
        assert stat.S_IMODE((units / name).stat().st_mode) == 0o644
    assert "systemctl --user daemon-reload && systemctl --user enable --now flowd.socket" in (
        done.stdout
    )
    assert f"ExecStart={FLOWD}" in done.stdout
    again = install(tmp_path)
    assert again.returncode == 0
    assert again.stdout.count(": unchanged") == 2


@needs_script
def test_without_xdg_config_home_the_units_go_under_the_home(tmp_path: Path) -> None:
    done = run_command([str(FLOWD), "install-units", "--user"], env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".config" / "systemd" / "user" / SERVICE_UNIT).is_file()


def test_python_m_flowd_writes_its_interpreter_with_a_safe_path(tmp_path: Path) -> None:
    done = run_command(
        [sys.executable, "-m", "flowd", "install-units", "--dry-run"],
        env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    assert done.returncode == 0, done.stderr
    assert f"ExecStart={sys.executable} -P -m flowd" in done.stdout
    assert not (tmp_path / "config").exists()  # a dry run writes nothing


@needs_script
def test_a_unit_with_other_text_is_kept_unless_forced(tmp_path: Path) -> None:
    units = tmp_path / "config" / "systemd" / "user"
    units.mkdir(parents=True)
    mine = "[Service]\nExecStart=/opt/my/flowd --root /data\n"
    (units / SERVICE_UNIT).write_text(mine)
    refused = install(tmp_path)
    assert refused.returncode == 3
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (units / SERVICE_UNIT).read_text() == mine
    assert not (units / SOCKET_UNIT).exists()  # nothing written when one is refused
    forced = install(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"{units / SERVICE_UNIT}: replaced" in forced.stdout
    assert exec_start((units / SERVICE_UNIT).read_text()) == str(FLOWD)
    assert [p.name for p in units.iterdir() if p.name.startswith(".")] == []


@needs_script
def test_a_unit_that_is_a_link_is_never_written_through(tmp_path: Path) -> None:
    units = tmp_path / "config" / "systemd" / "user"
    units.mkdir(parents=True)
    target = tmp_path / "elsewhere.service"
    target.write_text("keep me\n")
    (units / SERVICE_UNIT).symlink_to(target)
    assert install(tmp_path).returncode == 3
    forced = install(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() == "keep me\n"
    assert not (units / SERVICE_UNIT).is_symlink()
    assert exec_start((units / SERVICE_UNIT).read_text()) == str(FLOWD)


@needs_script
def test_an_unwritable_place_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("a file, not a directory")
    done = install(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("flowd: ") and done.stderr.count("\n") == 1


@needs_script
def test_system_units_refuse_a_flowd_others_can_change(tmp_path: Path, short: Path) -> None:
    shared = tmp_path / "system-units"
    done = install(tmp_path, "--system", "--unit-dir", str(shared))
    assert done.returncode == 0, done.stderr  # this environment: root's, written by root only
    assert "systemctl --global enable flowd.socket" in done.stdout
    assert exec_start((shared / SERVICE_UNIT).read_text()) == str(FLOWD)
    # the same flowd through a directory everyone may write: any user could swap it
    open_dir = short / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / "flowd").symlink_to(FLOWD)
    exposed = tmp_path / "exposed"
    refused = install(tmp_path, "--system", "--unit-dir", str(exposed), program=open_dir / "flowd")
    assert refused.returncode == 1
    assert "--system" in refused.stderr and refused.stderr.count("\n") == 1
    assert not exposed.exists()
    # --user units may run anything the user may
    assert install(tmp_path, "--force", program=open_dir / "flowd").returncode == 0


# -- systemd's view -----------------------------------------------------------------------


@needs_script
@needs_analyze
def test_systemd_analyze_verifies_the_written_units(tmp_path: Path, short: Path) -> None:
    assert install(tmp_path).returncode == 0
    checked = verify(tmp_path / "config" / "systemd" / "user", short, tmp_path)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@needs_script
@needs_analyze
def test_systemd_analyze_verifies_a_path_that_needs_quoting(tmp_path: Path, short: Path) -> None:
    odd = short / "my flows 100%$HOME"
    odd.mkdir()
    (odd / "flowd").symlink_to(FLOWD)
    assert install(tmp_path, program=odd / "flowd").returncode == 0
    units = tmp_path / "config" / "systemd" / "user"
    assert exec_start((units / SERVICE_UNIT).read_text()).startswith('"')
    checked = verify(units, short, tmp_path)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@needs_script
@needs_analyze
def test_the_shipped_units_verify_for_a_pip_user_install(tmp_path: Path, short: Path) -> None:
    bin_dir = tmp_path / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "flowd").symlink_to(FLOWD)
    checked = verify(PROJECT_ROOT / "systemd", short, tmp_path)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


ACTIVATE = shutil.which("systemd-socket-activate")


@needs_script
@pytest.mark.skipif(ACTIVATE is None, reason="no systemd-socket-activate (apt: systemd)")
def test_the_written_service_answers_when_socket_activated(tmp_path: Path, short: Path) -> None:
    """The service's ExecStart, run as systemd runs it: handed the listening socket."""
    assert ACTIVATE is not None
    assert install(tmp_path).returncode == 0
    command = exec_start((tmp_path / "config" / "systemd" / "user" / SERVICE_UNIT).read_text())
    path = short / "flowd.sock"
    activator = subprocess.Popen(
        [ACTIVATE, "-l", str(path), "-E", f"XDG_STATE_HOME={tmp_path / 'state'}", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(path.exists, 10), "the socket never appeared"
        with Client(path, timeout=30) as client:
            pong = client.call("ping")
        assert pong["pid"] == activator.pid  # it execs the unit's command in its place
    finally:
        activator.send_signal(signal.SIGTERM)
        _, log = activator.communicate(timeout=20)
    assert activator.returncode == 0, log
    assert "listening on the inherited socket" in log
