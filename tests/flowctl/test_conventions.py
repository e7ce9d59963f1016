"""The conventions a command line is expected to keep: ``--version``, comma lists, errors
named by the program the user typed and, in the shell, pointing to the shell's help; a
plain ``watch`` of a finished workflow says when it ended and exits. Real processes."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from flowctl import exitcodes
from flowctl.render.timefmt import clock
from tests.support.flowctl import flowctl, flowctl_command
from tests.support.procs import private_state, python_env
from tests.support.traces import records
from tests.support.workflows import write_traces


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("conventions")
    write_traces(
        base / "traces",
        ("wf-ok", "complete", 0),
        ("wf-bad", "fail", 0),
        env={"XDG_STATE_HOME": str(base / "state")},
    )
    return base / "traces"


@pytest.mark.parametrize("seed", [False, True])
def test_version_is_the_package_version(seed: bool) -> None:
    done = flowctl("--version", seed=seed)
    name = "doeff-flow" if seed else "flowctl"
    assert done.returncode == exitcodes.OK, done.stderr
    assert done.stdout == f"{name} {importlib.metadata.version('doeff-flow')}\n"


def test_ps_status_takes_a_comma_list(traces: Path) -> None:
    done = flowctl("--trace-dir", traces, "ps", "--status", "failed,completed")
    assert done.returncode == exitcodes.OK, done.stderr
    assert sorted(line.split()[0] for line in done.stdout.splitlines()) == ["wf-bad", "wf-ok"]
    failed = flowctl("--trace-dir", traces, "ps", "--status", "failed,lost")
    assert [line.split()[0] for line in failed.stdout.splitlines()] == ["wf-bad"]
    wrong = flowctl("--trace-dir", traces, "ps", "--status", "failed,nope")
    assert wrong.returncode == exitcodes.USAGE and "no status 'nope'" in wrong.stderr


def test_doeff_flow_errors_are_named_doeff_flow(traces: Path) -> None:
    done = flowctl("history", "wf-none", "--trace-dir", traces, seed=True)
    assert done.returncode == exitcodes.NOT_FOUND
    assert done.stderr.startswith("doeff-flow: no workflow 'wf-none'"), done.stderr
    usage = flowctl("histry", seed=True)
    assert usage.returncode == exitcodes.USAGE and usage.stderr.startswith("doeff-flow: ")
    assert "flowctl" not in done.stderr + usage.stderr


def test_errors_in_the_shell_point_to_its_help_and_never_offer_shell(traces: Path) -> None:
    done = subprocess.run(
        flowctl_command("--trace-dir", traces, "shell"),
        input="bogus\nhistory\nps --last 3\n",
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
        check=False,
    )
    errors = done.stderr.splitlines()
    assert len(errors) == 3, done.stderr
    assert "invalid choice: 'bogus'" in errors[0] and "(try 'help')" in errors[0]
    assert "'shell'" not in errors[0] and "'history'" in errors[0]
    assert "(try 'help history')" in errors[1] and "unrecognized arguments: --last 3" in errors[2]
    assert "--help" not in done.stderr


def test_plain_watch_of_a_finished_workflow_shows_when_it_ended_and_exits(
    traces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_state(monkeypatch, tmp_path / "state")
    for workflow_id, code in (("wf-ok", exitcodes.OK), ("wf-bad", exitcodes.WORKFLOW_FAILED)):
        done = subprocess.run(
            flowctl_command("--trace-dir", traces, "watch", workflow_id),
            env=python_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == code, (workflow_id, done.stderr)
        last = records(traces / workflow_id / "trace.jsonl")[-1]
        ended = clock(datetime.fromisoformat(last["updated_at"]))
        (line,) = done.stdout.splitlines()
        assert re.match(rf"{re.escape(ended)}  {workflow_id}  ", line), (ended, line)
