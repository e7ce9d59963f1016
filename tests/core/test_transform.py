"""Tracing a program without changing it: ``doeff run --transform doeff_flow_core.traced``
and ``doeff-flow run``, each in a real process, the trace read back with the core's readers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from doeff_flow_core import LiveTrace, read_history, read_latest, trace_file
from doeff_flow_core.transform import default_workflow_id, program_name, sanitize_name
from flowctl import exitcodes
from tests.support.procs import PROJECT_ROOT, python_env, run_command

BIN = Path(sys.executable).parent
DOEFF = str(BIN / "doeff")
DOEFF_FLOW = str(BIN / "doeff-flow")
DERIVED_ID = re.compile(r"report-\d{8}T\d{6}Z")

WORKFLOW_MODULE = """
from doeff import Get, Put, do
from doeff_core_effects import slog


@do
def add(amount):
    total = yield Get("total")
    yield Put("total", total + amount)
    yield slog("added", amount=amount)
    return total + amount


@do
def report():
    yield Put("total", 0)
    yield add(20)
    return (yield add(22))


@do
def explode():
    yield Put("total", 1)
    raise ValueError("boom")


@do
def failing():
    yield Put("total", 0)
    yield add(5)
    return (yield explode())


program = report()
failing_program = failing()
"""

INTERPRETERS_MODULE = """
from doeff.cli.run_services import default_interpreter


def broken(program):
    raise RuntimeError("the interpreter broke before running anything")


def twice(program):
    return [default_interpreter(program), default_interpreter(program)]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding the workflow module ``flows``, as a user's project would."""
    (tmp_path / "flows.py").write_text(textwrap.dedent(WORKFLOW_MODULE), encoding="utf-8")
    (tmp_path / "interpreters.py").write_text(INTERPRETERS_MODULE, encoding="utf-8")
    return tmp_path


def doeff_run(
    project: Path, program: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``doeff run --program flows.<program> --transform doeff_flow_core.traced`` in
    ``project``; ``HOME`` there too, so no ``~/.doeff.py`` of the machine takes part."""
    transform = ["--transform", "doeff_flow_core.traced"]
    return run_command(
        [DOEFF, "run", "--program", f"flows.{program}", *extra, *transform],
        cwd=project,
        env={
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(project)]),
            "HOME": str(project),
            "DOEFF_FLOW_TRACE_DIR": str(project / "traces"),
            **(env or {}),
        },
    )


def doeff_flow_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``doeff-flow run ...`` in ``project``, which is not on ``PYTHONPATH``: the current
    directory alone makes ``flows`` importable."""
    return run_command([DOEFF_FLOW, "run", *args], cwd=project)


def history(trace_dir: Path, workflow_id: str) -> list[LiveTrace]:
    return list(read_history(trace_file(trace_dir, workflow_id), 1000).records)


def effects(records: list[LiveTrace]) -> list[str | None]:
    return [record.current_effect for record in records if not record.is_terminal]


def workflow_ids(trace_dir: Path) -> list[str]:
    return sorted(path.name for path in trace_dir.iterdir()) if trace_dir.exists() else []


REPORT_EFFECTS = [
    "Put('total', 0)",
    "Get('total')",
    "Put('total', 20)",
    "slog('added', amount=20)",
    "Get('total')",
    "Put('total', 42)",
    "slog('added', amount=22)",
]


# -- doeff run --transform doeff_flow_core.traced ------------------------------------------


def test_doeff_run_transform_records_each_effect_and_the_result(project: Path) -> None:
    proc = doeff_run(project, "program", env={"DOEFF_FLOW_WORKFLOW_ID": "wf-transform"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "42"
    records = history(project / "traces", "wf-transform")
    assert effects(records) == REPORT_EFFECTS
    assert [record.step for record in records] == list(range(1, len(records) + 1))
    # The chain of a nested call, outermost first, without doeff-flow's own wrappers.
    put_20 = records[2]
    assert [frame.function for frame in put_20.trace] == ["report", "add"]
    assert put_20.trace[-1].code == 'yield Put("total", total + amount)'
    last = read_latest(trace_file(project / "traces", "wf-transform"))
    assert last is not None and last.status == "completed"
    assert last.result == "42"
    assert last.last_slog is not None and last.last_slog.msg == "added"
    assert len({record.run for record in records}) == 1


def test_doeff_run_transform_records_a_failure_with_the_error(project: Path) -> None:
    proc = doeff_run(project, "failing_program", env={"DOEFF_FLOW_WORKFLOW_ID": "wf-broken"})
    assert proc.returncode == 1  # doeff run's own exit code for a failed program
    assert "boom" in proc.stderr
    records = history(project / "traces", "wf-broken")
    assert effects(records)[-1] == "Put('total', 1)"
    last = records[-1]
    assert last.status == "failed"
    assert last.error == "ValueError: boom"
    assert [frame.function for frame in last.trace] == ["failing", "explode"]


def test_doeff_run_transform_derives_the_id_from_the_program(project: Path) -> None:
    proc = doeff_run(project, "program")
    assert proc.returncode == 0, proc.stderr
    (workflow_id,) = workflow_ids(project / "traces")
    assert DERIVED_ID.fullmatch(workflow_id), workflow_id
    last = read_latest(trace_file(project / "traces", workflow_id))
    assert last is not None and (last.status, last.result) == ("completed", "42")


def test_doeff_run_transform_refuses_a_bad_id_before_anything_is_written(
    project: Path,
) -> None:
    proc = doeff_run(project, "program", env={"DOEFF_FLOW_WORKFLOW_ID": "../escape"})
    assert proc.returncode == 1
    assert "invalid workflow id '../escape'" in proc.stderr
    assert workflow_ids(project / "traces") == []
    assert not (project / "escape").exists()


def test_trace_of_a_program_the_interpreter_never_ran_ends_failed(project: Path) -> None:
    proc = doeff_run(
        project,
        "program",
        "--interpreter",
        "interpreters.broken",
        env={"DOEFF_FLOW_WORKFLOW_ID": "wf-never"},
    )
    assert proc.returncode == 1
    assert "the interpreter broke" in proc.stderr
    (last,) = history(project / "traces", "wf-never")
    assert last.status == "failed"
    assert last.error is not None and last.error.startswith("ProgramNeverRan: ")


def test_a_traced_program_run_twice_is_traced_as_two_runs(project: Path) -> None:
    proc = doeff_run(
        project,
        "program",
        "--interpreter",
        "interpreters.twice",
        env={"DOEFF_FLOW_WORKFLOW_ID": "wf-twice"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[42, 42]"
    records = history(project / "traces", "wf-twice")
    runs = list(dict.fromkeys(record.run for record in records))
    assert len(runs) == 2
    for run in runs:
        of_run = [record for record in records if record.run == run]
        assert effects(of_run) == REPORT_EFFECTS
        assert (of_run[-1].status, of_run[-1].result) == ("completed", "42")


# -- doeff-flow run -------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["flows:program", "flows.program"])
def test_doeff_flow_run_prints_the_value_and_traces_the_run(project: Path, reference: str) -> None:
    proc = doeff_flow_run(project, reference, "--id", "wf-cli", "--trace-dir", "traces")
    assert proc.returncode == exitcodes.OK, proc.stderr
    assert proc.stdout == "42\n"
    records = history(project / "traces", "wf-cli")
    assert effects(records) == REPORT_EFFECTS
    assert (records[-1].status, records[-1].result) == ("completed", "42")


def test_doeff_flow_run_derives_the_id_and_uses_the_trace_dir_variable(project: Path) -> None:
    proc = run_command(
        [DOEFF_FLOW, "run", "flows:program"],
        cwd=project,
        env={"DOEFF_FLOW_TRACE_DIR": str(project / "env-traces")},
    )
    assert proc.returncode == exitcodes.OK, proc.stderr
    (workflow_id,) = workflow_ids(project / "env-traces")
    assert DERIVED_ID.fullmatch(workflow_id), workflow_id
    last = read_latest(trace_file(project / "env-traces", workflow_id))
    assert last is not None and last.status == "completed"


def test_doeff_flow_run_reports_a_failure_in_one_line(project: Path) -> None:
    proc = doeff_flow_run(project, "flows:failing_program", "--id", "wf-fail", "--trace-dir", "t")
    assert proc.returncode == exitcodes.WORKFLOW_FAILED
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["doeff-flow: workflow wf-fail failed: ValueError: boom"]
    last = read_latest(trace_file(project / "t", "wf-fail"))
    assert last is not None and (last.status, last.error) == ("failed", "ValueError: boom")


def test_flowctl_run_is_the_same_command(project: Path) -> None:
    proc = run_command(
        [str(BIN / "flowctl"), "--trace-dir", "traces", "--json", "run", "flows:program"],
        cwd=project,
    )
    assert proc.returncode == exitcodes.OK, proc.stderr
    assert '"status": "completed", "result": 42' in proc.stdout


@pytest.mark.parametrize(
    ("reference", "code", "message"),
    [
        ("nowhere:program", exitcodes.NOT_FOUND, "no module named 'nowhere'"),
        ("flows:nothing", exitcodes.NOT_FOUND, "flows has no attribute 'nothing'"),
        ("flows.nothing", exitcodes.NOT_FOUND, "flows has no attribute 'nothing'"),
        ("flows:add", exitcodes.USAGE, "flows:add is a function, not a doeff program"),
        ("flows", exitcodes.USAGE, "not a program reference: 'flows'"),
        ("flows:program:x", exitcodes.USAGE, "not a program reference"),
    ],
)
def test_doeff_flow_run_refuses_a_bad_reference_in_one_line(
    project: Path, reference: str, code: int, message: str
) -> None:
    proc = doeff_flow_run(project, reference, "--trace-dir", "traces")
    assert proc.returncode == code, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("doeff-flow: ") and message in line
    assert workflow_ids(project / "traces") == []


def test_doeff_flow_run_reports_a_module_that_raises_on_import(project: Path) -> None:
    (project / "broken.py").write_text('raise RuntimeError("not today")\n', encoding="utf-8")
    proc = doeff_flow_run(project, "broken:program", "--trace-dir", "traces")
    assert proc.returncode == exitcodes.WORKFLOW_FAILED
    assert proc.stderr.splitlines() == [
        "doeff-flow: importing broken failed: RuntimeError: not today"
    ]


def test_doeff_flow_run_refuses_a_bad_id_before_importing(project: Path) -> None:
    (project / "noisy.py").write_text(
        "from pathlib import Path\nPath('imported').touch()\nfrom flows import program\n",
        encoding="utf-8",
    )
    proc = doeff_flow_run(project, "noisy:program", "--id", "no/slash", "--trace-dir", "traces")
    assert proc.returncode == exitcodes.USAGE
    (line,) = proc.stderr.splitlines()
    assert "invalid workflow id 'no/slash'" in line
    assert not (project / "imported").exists()
    assert workflow_ids(project / "traces") == []


# -- the default workflow id ---------------------------------------------------------------


def test_default_id_names_the_function_behind_the_program() -> None:
    from doeff import Pure, WithObserve, do, with_handlers
    from doeff_core_effects import state

    @do  # type: ignore[untyped-decorator]
    def nightly_etl() -> object:
        return (yield Pure(1))

    program = nightly_etl()
    assert program_name(program) == "nightly_etl"
    assert program_name(with_handlers([state()], WithObserve(print, program))) == "nightly_etl"
    assert program_name(Pure(1)) is None
    assert default_workflow_id(program, now=0) == "nightly_etl-19700101T000000Z"
    assert default_workflow_id(Pure(1), "fallback", now=0) == "fallback-19700101T000000Z"
    assert default_workflow_id(Pure(1), now=0) == "workflow-19700101T000000Z"


def test_default_id_keeps_to_the_id_rule() -> None:
    assert sanitize_name("<lambda>") == "lambda"
    assert sanitize_name("集計") == "workflow"
    assert sanitize_name("a.b c") == "a_b_c"
    long_id = default_workflow_id(None, "x" * 400, now=0)
    assert len(long_id) == 255 and long_id.endswith("x-19700101T000000Z")


def test_the_shell_does_not_offer_run(project: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "flowctl"), "--trace-dir", "traces", "shell"],
        input="run flows:program\n",
        cwd=project,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == exitcodes.USAGE
    assert "run is not available in the shell" in proc.stderr
    assert workflow_ids(project / "traces") == []
