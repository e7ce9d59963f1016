"""``flowctl`` and ``doeff-flow`` as processes, over traces written by real doeff programs:
completed, failed, killed mid-run (lost), still running, and damaged ones."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl import exitcodes
from tests.support.flowctl import assert_one_error_line, flowctl, untimed
from tests.support.procs import PROJECT_ROOT, python_command, python_env, run_python
from tests.support.traces import json_lines, put_trace, record_line
from tests.support.workflows import start_blocked, write_traces


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One directory with every kind of workflow a user meets."""
    base = tmp_path_factory.mktemp("cli")
    trace_dir = base / "traces"
    env = {"XDG_STATE_HOME": str(base / "state")}
    write_traces(
        trace_dir,
        ("wf-001", "complete", 0),
        ("wf-002", "fail", 0),
        ("wf-tasks", "tasks", 2),
        env=env,
    )
    killed = start_blocked(trace_dir, "wf-lost", env)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live = start_blocked(trace_dir, "wf-live", env)
    put_trace(trace_dir, "wf-corrupt", b"\x00\xffnot json at all\n{]\n")
    put_trace(
        trace_dir,
        "wf-types",
        record_line("wf-types", 1) + record_line("wf-types", "two") + record_line("wf-types", 3),  # type: ignore[arg-type]
    )
    put_trace(trace_dir, "wf-torn", record_line("wf-torn", 1) + '{"workflow_id": "wf-to')
    try:
        yield trace_dir
    finally:
        live.kill()
        live.wait()


def ps(traces: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return flowctl("--trace-dir", traces, "ps", *args)


# -- ps ------------------------------------------------------------------------------------------


def test_ps_lists_every_workflow_with_its_effective_status(traces: Path) -> None:
    done = ps(traces)
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert rows["wf-001"].startswith("wf-001      completed   step 10 ")
    assert rows["wf-002"].startswith("wf-002      failed      step 10 ")
    assert rows["wf-lost"].startswith("wf-lost     lost        step ")
    assert rows["wf-live"].startswith("wf-live     running     step ")
    assert "ago" in rows["wf-live"] and rows["wf-live"].endswith("waiting for the model")
    assert rows["wf-torn"].startswith("wf-torn     running")  # the torn line is skipped
    assert rows["wf-types"].split()[:3] == ["wf-types", "running", "step"]
    assert rows["wf-types"].split()[3] == "3"
    # The damaged trace is listed, reported on stderr, and makes the exit code say so.
    assert rows["wf-corrupt"].startswith("wf-corrupt  unreadable")
    assert_one_error_line(done, exitcodes.BAD_TRACE, "wf-corrupt: no valid record")


def test_ps_status_filter_and_json(traces: Path) -> None:
    done = ps(traces, "--status", "lost")
    assert done.returncode == 0 and [line.split()[0] for line in done.stdout.splitlines()] == [
        "wf-lost"
    ]
    data = {item["workflow_id"]: item for item in json.loads(ps(traces, "--json").stdout)}
    assert data["wf-lost"]["status"] == "lost" and data["wf-lost"]["written_status"] == "running"
    assert data["wf-001"]["status"] == "completed" and data["wf-001"]["result"] == "30"
    assert data["wf-live"]["status"] == "running" and isinstance(data["wf-live"]["step"], int)
    assert data["wf-corrupt"]["status"] == "unreadable" and data["wf-corrupt"]["step"] is None
    for item in data.values():
        assert {"workflow_id", "status", "step", "updated_at"} <= set(item)


def test_ps_missing_trace_directory(tmp_path: Path) -> None:
    done = flowctl("--trace-dir", tmp_path / "nowhere", "ps")
    assert_one_error_line(done, exitcodes.NOT_FOUND, "does not exist")


# -- history -------------------------------------------------------------------------------------


def test_history_shows_the_seed_lines_and_the_terminal_line(traces: Path) -> None:
    done = flowctl("--trace-dir", traces, "history", "wf-001", "--last", "4")
    assert done.returncode == 0
    assert [untimed(line) for line in done.stdout.splitlines()] == [
        "step    7  running     slog('processing', step=2)",
        "step    8  running     Get('total')",
        "step    9  running     Put('total', 30)",
        "step   10  completed   result: 30",
    ]
    assert len(flowctl("--trace-dir", traces, "history", "wf-001").stdout.splitlines()) == 10


def test_history_of_a_failure_shows_the_error_escaped(traces: Path) -> None:
    done = flowctl("--trace-dir", traces, "history", "wf-002", "--last", "1")
    assert untimed(done.stdout) == (
        "step   10  failed      error: "
        "ValueError: bad \\x1b[2J\\x1b]0;pwned\\x07 input\\r\\u202eevil\n"
    )
    raw = flowctl("--trace-dir", traces, "history", "wf-002", "--last", "1", "--json")
    (record,) = json_lines(raw.stdout)
    assert record["error"] == "ValueError: bad \x1b[2J\x1b]0;pwned\x07 input\r\u202eevil"
    assert record["status"] == "failed" and "\x1b" not in raw.stdout


def test_history_json_lines_are_records_as_written(traces: Path) -> None:
    done = flowctl("--json", "--trace-dir", traces, "history", "wf-lost", "--last", "3")
    *records, derived = json_lines(done.stdout)
    assert derived["derived"] is True and derived["status"] == "lost"  # its writer was killed
    assert derived["step"] == records[-1]["step"] and "trace" not in derived
    assert len(records) == 3 and all(r["status"] == "running" for r in records)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert records[-1]["current_effect"].startswith("Slow(")


def test_history_marks_spawned_tasks(traces: Path) -> None:
    text = flowctl("--trace-dir", traces, "history", "wf-tasks", "--last", "20").stdout
    assert "[task " in text and "Gather(" in text and "completed   " in text.splitlines()[-1]


def test_history_skips_malformed_lines_and_says_so(traces: Path) -> None:
    done = flowctl("--trace-dir", traces, "history", "wf-types")
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["1", "3"]
    assert_one_error_line(done, exitcodes.BAD_TRACE, "1 malformed line skipped")
    torn = flowctl("--trace-dir", traces, "history", "wf-torn")
    assert torn.returncode == 0 and torn.stdout.count("\n") == 1 and torn.stderr == ""


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["history", "../../etc"], exitcodes.USAGE, "invalid workflow id"),
        (["history", "wf-nope"], exitcodes.NOT_FOUND, "no workflow 'wf-nope'"),
        (["history", "wf-corrupt"], exitcodes.BAD_TRACE, "no valid record"),
        (["history", "wf-001", "--last", "0"], exitcodes.USAGE, "must be at least 1"),
        (["watch", "wf-1", "--poll-interval", "x"], exitcodes.USAGE, "not a number"),
        (["frobnicate"], exitcodes.USAGE, "invalid choice"),
        (["watch", "bad/id", "--exit-on-complete"], exitcodes.USAGE, "invalid workflow id"),
    ],
)
def test_bad_input_gives_one_line_and_a_documented_code(
    traces: Path, args: list[str], code: int, text: str
) -> None:
    done = flowctl("--trace-dir", traces, *args)
    if "invalid choice" in text:
        assert done.returncode == code and "invalid choice" in done.stderr
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    else:
        assert_one_error_line(done, code, text)


# -- spellings, defaults, modes ------------------------------------------------------------------


def test_seed_spelling_puts_options_after_the_subcommand(traces: Path) -> None:
    seed = flowctl("history", "wf-001", "--last", "2", "--trace-dir", traces, seed=True)
    ours = flowctl("--trace-dir", traces, "history", "wf-001", "--last", "2")
    assert seed.returncode == 0 and seed.stdout == ours.stdout
    assert flowctl("ps", "--json", "--trace-dir", traces).stdout.startswith("[")
    seed_ps = flowctl("ps", "--trace-dir", traces, "--status", "completed", seed=True)
    assert seed_ps.stdout.startswith("wf-001    completed   step 10 ")  # the seed's columns


def test_trace_dir_defaults_to_env_then_dot_doeff_flow(traces: Path, tmp_path: Path) -> None:
    by_env = flowctl("ps", "--status", "failed", env={"DOEFF_FLOW_TRACE_DIR": str(traces)})
    assert by_env.stdout.startswith("wf-002")
    put_trace(tmp_path / ".doeff-flow", "wf-here", record_line("wf-here", 5))
    here = flowctl("ps", cwd=tmp_path)
    assert here.stdout.startswith("wf-here   ") and "step 5" in here.stdout


def test_no_command_off_a_terminal_prints_usage(traces: Path) -> None:
    done = flowctl("--trace-dir", traces)
    assert done.returncode == exitcodes.USAGE and done.stderr.startswith("usage: flowctl")
    assert flowctl("--help").returncode == 0 and "history" in flowctl("--help").stdout


def test_verbose_says_files_are_read_and_socket_is_accepted(traces: Path, tmp_path: Path) -> None:
    quiet = flowctl(
        "--socket", tmp_path / "none.sock", "--trace-dir", traces, "ps", "--status", "failed"
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = flowctl("--verbose", "--trace-dir", traces, "ps", "--status", "failed")
    assert "reading trace files in" in loud.stderr and loud.stdout.startswith("wf-002")


def test_watch_exit_on_complete_codes(traces: Path) -> None:
    assert flowctl("--trace-dir", traces, "watch", "wf-001", "--exit-on-complete").returncode == 0
    failed = flowctl("--trace-dir", traces, "watch", "wf-002", "--exit-on-complete")
    assert failed.returncode == 1 and "failed" in failed.stdout
    lost = flowctl("--trace-dir", traces, "watch", "wf-lost", "--exit-on-complete")
    assert lost.returncode == 1 and "lost: writer pid" in lost.stdout


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-big", "".join(record_line("wf-big", i) for i in range(1, 20001)))
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    command = python_command("import sys; from flowctl.cli import main; sys.exit(main())")
    done = subprocess.run(
        [*command, "--trace-dir", str(tmp_path), "history", "wf-big", "--last", "20000"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        check=False,
    )
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait()
    assert done.returncode == exitcodes.OK and done.stderr == ""


def test_a_trace_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "wf-dir" / "trace.jsonl").mkdir(parents=True)
    put_trace(tmp_path, "wf-ok", record_line("wf-ok", 1))
    for args in (["history", "wf-dir"], ["watch", "wf-dir"]):
        done = flowctl("--trace-dir", tmp_path, *args)
        assert_one_error_line(
            done, exitcodes.UNAVAILABLE, "wf-dir: not a regular file (a directory)"
        )
        assert done.stdout == ""
    listed = flowctl("--trace-dir", tmp_path, "ps")
    assert_one_error_line(listed, exitcodes.BAD_TRACE, "wf-dir: not a regular file (a directory)")
    assert listed.stdout.splitlines()[1].startswith("wf-ok     running")


def test_the_dependency_rule() -> None:
    """flowctl imports the standard library, doeff_flow_core and prompt_toolkit only."""
    allowed = set(sys.stdlib_module_names) | {"flowctl", "doeff_flow_core", "prompt_toolkit"}
    for path in (PROJECT_ROOT / "flowctl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path} imports {name}"


def test_ps_and_history_load_neither_doeff_nor_prompt_toolkit(traces: Path) -> None:
    code = f"""
        import sys
        from flowctl.cli import main
        main(["--trace-dir", {str(traces)!r}, "ps"])
        main(["--trace-dir", {str(traces)!r}, "history", "wf-001"])
        roots = {{name.split(".")[0] for name in sys.modules}}
        banned = {{"doeff", "doeff_vm", "doeff_core_effects", "flowd", "prompt_toolkit"}}
        print(sorted(roots & banned))
    """
    done = run_python(code)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr
