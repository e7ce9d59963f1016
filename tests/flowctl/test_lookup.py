"""A workflow found from any directory: with no ``--trace-dir``, flowctl looks in
``.doeff-flow``, then through flowd, then in the trace directories writers registered;
``ps --all`` lists every registered directory from the files. Real workflows write real
traces (registering their directory in a private ``$XDG_STATE_HOME``); ``flowctl`` runs
as a process from another directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flowctl import exitcodes
from tests.support.flowctl import assert_one_error_line, flowctl, flowctl_command, untimed
from tests.support.flowd import flowd
from tests.support.procs import private_state, python_env
from tests.support.workflows import run_workflow_to_end


@pytest.fixture
def projects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two projects that ran workflows (registering their trace directories): ``report-1``
    in the first, ``etl-1`` in both; and an empty directory to run flowctl from."""
    private_state(monkeypatch, tmp_path / "state")
    for project in ("one", "two"):
        (tmp_path / project).mkdir()
    run_workflow_to_end(tmp_path / "one" / ".doeff-flow", "report-1", steps=2)
    run_workflow_to_end(tmp_path / "one" / ".doeff-flow", "etl-1", steps=1)
    run_workflow_to_end(tmp_path / "two" / ".doeff-flow", "etl-1", steps=3)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_history_finds_a_registered_workflow_from_another_directory(projects: Path) -> None:
    done = flowctl("history", "report-1", "--last", "1", cwd=projects / "elsewhere")
    assert done.returncode == exitcodes.OK, done.stderr
    assert untimed(done.stdout) == "step    7  completed   result: 2\n" and done.stderr == ""
    told = flowctl("-v", "history", "report-1", "--last", "1", cwd=projects / "elsewhere")
    where = str((projects / "one" / ".doeff-flow").resolve())
    assert f"found report-1 in {where} (a registered directory)" in told.stderr


def test_watch_of_a_registered_workflow_ends_instead_of_waiting(projects: Path) -> None:
    done = subprocess.run(
        flowctl_command("watch", "report-1", "--exit-on-complete"),
        cwd=projects / "elsewhere",
        env=python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == exitcodes.OK, done.stderr
    assert "report-1" in done.stdout and "completed" in done.stdout
    assert "waiting for" not in done.stdout


def test_an_id_in_two_registered_directories_is_an_error_naming_both(projects: Path) -> None:
    done = flowctl("history", "etl-1", cwd=projects / "elsewhere")
    assert_one_error_line(done, exitcodes.USAGE, "'etl-1' is in ")
    for project in ("one", "two"):
        assert str((projects / project / ".doeff-flow").resolve()) in done.stderr
    picked = flowctl("--trace-dir", projects / "two" / ".doeff-flow", "history", "etl-1")
    assert picked.returncode == exitcodes.OK


def test_the_current_directory_comes_first(projects: Path) -> None:
    done = flowctl("history", "etl-1", "--last", "1", cwd=projects / "two")
    assert done.returncode == exitcodes.OK, done.stderr
    assert untimed(done.stdout) == "step   10  completed   result: 3\n"


def test_an_id_found_nowhere_is_looked_for_where_it_always_was(projects: Path) -> None:
    done = flowctl("history", "nowhere-1", cwd=projects / "one")
    assert_one_error_line(done, exitcodes.NOT_FOUND, "no workflow 'nowhere-1' in .doeff-flow")


def test_ps_all_lists_every_registered_directory(projects: Path) -> None:
    done = flowctl("ps", "--all", cwd=projects / "elsewhere")
    assert done.returncode == exitcodes.OK, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    one, two = ((projects / p / ".doeff-flow").resolve() for p in ("one", "two"))
    assert sorted(names) == sorted([f"etl-1@{one}", f"etl-1@{two}", "report-1"])
    plain = flowctl("ps", cwd=projects / "elsewhere")  # without --all: the current directory
    assert_one_error_line(plain, exitcodes.NOT_FOUND, "trace directory .doeff-flow does not exist")
    narrowed = flowctl("--trace-dir", one, "ps", "--all", cwd=projects / "elsewhere")
    assert_one_error_line(narrowed, exitcodes.USAGE, "leave out --trace-dir")


def test_through_flowd_an_id_is_found_anywhere_and_the_current_directory_still_comes_first(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with flowd(state=projects / "state") as daemon:
        monkeypatch.setenv("DOEFF_FLOW_SOCKET", str(daemon.socket))
        found = flowctl("-v", "history", "report-1", "--last", "1", cwd=projects / "elsewhere")
        assert found.returncode == exitcodes.OK, found.stderr
        assert untimed(found.stdout) == "step    7  completed   result: 2\n"
        assert "found report-1 through flowd" in found.stderr
        here = flowctl("history", "etl-1", "--last", "1", cwd=projects / "one")
        assert untimed(here.stdout) == "step    4  completed   result: 1\n", here.stderr
        there = flowctl("history", "etl-1", "--last", "1", cwd=projects / "two")
        assert untimed(there.stdout) == "step   10  completed   result: 3\n", there.stderr
