"""The shell: driven through prompt-toolkit's pipe input (no terminal), and once for real
in a pseudo-terminal (``flowctl`` with no command opens it)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.buffer import CompletionState
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from doeff_flow_core.liveness import this_host
from doeff_flow_core.locations import state_dir
from flowctl import exitcodes
from flowctl.commands import dispatch
from flowctl.options import GlobalOptions
from flowctl.shell import FlowCompleter, FlowShell
from flowctl.sources.files import FileSource
from tests.support.flowctl import Tmux, flowctl_command, untimed
from tests.support.procs import python_env, wait_until
from tests.support.traces import put_trace, record_line
from tests.support.workflows import start_workflow, write_traces


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("shell")
    write_traces(
        base / "traces",
        ("wf-001", "complete", 0),
        ("wf-002", "fail", 0),
        env={"XDG_STATE_HOME": str(base / "state")},
    )
    return base / "traces"


class Driven:
    """A shell fed from a pipe; ``run(keys)`` types the keys and returns what it printed."""

    def __init__(self, trace_dir: Path, history: object = None) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.trace_dir = trace_dir
        self.history = history

    def run(self, *chunks: str) -> int:
        """Type ``chunks`` one after another; a Tab waits for completions to be ready."""
        with create_pipe_input() as pipe:
            shell = FlowShell(
                GlobalOptions(trace_dir=str(self.trace_dir)),
                FileSource(self.trace_dir),
                dispatch,
                out=self.out,
                err=self.err,
                interactive=False,
                history=self.history,  # type: ignore[arg-type]
                input=pipe,
                output=DummyOutput(),
            )
            self.shell = shell
            if len(chunks) == 1:
                pipe.send_text(chunks[0])
                return shell.run()

            def state() -> tuple[str, CompletionState | None]:
                prompt = shell.active_prompt
                if prompt is None:
                    return "", None
                return prompt.default_buffer.text, prompt.default_buffer.complete_state

            def ready_to_complete() -> bool:
                text, completing = state()
                return completing is not None and completing.original_document.text == text

            def completed() -> bool:
                completing = state()[1]
                return completing is not None and completing.complete_index is not None

            def feed() -> None:
                for chunk in chunks:
                    if chunk == "\t":  # completion runs asynchronously: wait for it
                        assert wait_until(ready_to_complete, 10)
                    pipe.send_text(chunk)
                    if chunk == "\t":
                        assert wait_until(completed, 10)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            try:
                return shell.run()
            finally:
                feeder.join()


@pytest.fixture
def driven(traces: Path) -> Iterator[Driven]:
    yield Driven(traces, InMemoryHistory())


def test_the_shell_runs_the_same_commands_and_leaves_on_ctrl_d(driven: Driven) -> None:
    code = driven.run("ps\rhistory wf-001 --last 2\rps --status failed --json\r\x04")
    assert code == exitcodes.OK
    out = driven.out.getvalue()
    assert "wf-001    completed   step 10" in out and "wf-002    failed      step 10" in out
    shown = "step    9  running     Put('total', 30)\nstep   10  completed   result: 30\n"
    assert shown in untimed(out)
    assert '[{"workflow_id": "wf-002"' in out
    assert driven.err.getvalue() == ""


def test_errors_are_reported_and_the_shell_goes_on(driven: Driven) -> None:
    code = driven.run("history wf-nope\rhistory ../x\rbogus\rhistory\rps\rexit\r")
    assert code == exitcodes.OK
    errors = driven.err.getvalue().splitlines()
    assert errors[0] == f"flowctl: no workflow 'wf-nope' in {driven.trace_dir}"
    assert errors[1].startswith("flowctl: invalid workflow id '../x'")
    assert "invalid choice: 'bogus'" in errors[2] and "required: WF" in errors[3]
    assert "wf-001    completed" in driven.out.getvalue()  # the last ps still ran


def test_ctrl_c_at_the_prompt_clears_the_line(driven: Driven) -> None:
    assert driven.run("history wf-0\x03ps --status completed\r\x04") == exitcodes.OK
    out = driven.out.getvalue()
    assert "wf-001    completed" in out and "completed   -" not in out  # no history ran


def test_help_lists_commands_and_command_options(driven: Driven) -> None:
    driven.run("help\rhelp history\rhelp nope\r\x04")
    out = driven.out.getvalue()
    for word in ("ps", "history", "watch", "exit", "Ctrl-D"):
        assert word in out
    assert "--follow" in out and "--last N" in out
    assert "no command 'nope'" in driven.err.getvalue()


def test_tab_completes_commands_and_workflow_ids(driven: Driven) -> None:
    # Completions show while typing; Tab picks the first one.
    driven.run("hist", "\t", " wf-0", "\t", " --last 1\r", "\x04")
    assert untimed(driven.out.getvalue()).endswith("step   10  completed   result: 30\n")


def test_watch_in_the_shell_returns_to_the_prompt(driven: Driven) -> None:
    driven.run("watch wf-002 --exit-on-complete\rps --status completed\r\x04")
    out = driven.out.getvalue()
    assert "wf-002  failed      step 10  error: ValueError" in out
    assert out.rstrip().endswith("processing step=2")  # ps ran after the watch


def test_ctrl_c_during_a_watch_returns_to_the_prompt(driven: Driven) -> None:
    # A workflow still running (its writer is this process): the watch waits for it.
    live = record_line("wf-live", 1, pid=os.getpid(), host=this_host())
    put_trace(driven.trace_dir, "wf-live", live)

    def interrupt_the_watch() -> None:
        # Ctrl-C reaches a plain watch as SIGINT; send it once the watch has printed.
        if wait_until(lambda: "wf-live  running" in driven.out.getvalue(), 20):
            os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_the_watch, daemon=True)
    interrupter.start()
    try:
        code = driven.run("watch wf-live\rps --status failed\r\x04")
    finally:
        shutil.rmtree(driven.trace_dir / "wf-live")  # the directory is the module's
    interrupter.join()
    assert code == exitcodes.OK
    out = driven.out.getvalue()
    assert "wf-live  running" in out and "wf-002    failed" in out


def test_toolbar_counts_by_status(driven: Driven, tmp_path: Path) -> None:
    driven.run("\x04")
    assert (
        driven.shell.toolbar() == f" source: files ({driven.trace_dir}) · 1 failed · 1 completed "
    )
    missing = Driven(tmp_path / "nowhere", InMemoryHistory())
    missing.run("\x04")
    assert "does not exist" in missing.shell.toolbar()


def test_history_file_under_the_state_directory(traces: Path) -> None:
    Driven(traces).run("ps --status failed\r\x04")
    path = state_dir() / "flowctl_history"
    assert "ps --status failed" in path.read_text()


def test_completer() -> None:
    completer = FlowCompleter(lambda: ["wf-001", "wf-002", "etl-1"])

    def complete(text: str) -> list[str]:
        found = completer.get_completions(Document(text), CompleteEvent())
        return sorted(c.text for c in found)

    assert complete("hi") == ["history"]
    assert complete("") == [
        "exit",
        "export",
        "help",
        "history",
        "profile",
        "prune",
        "ps",
        "quit",
        "roots",
        "shell",
        "status",
        "watch",
    ]
    assert complete("watch wf") == ["wf-001", "wf-002"]
    assert complete("history --last 5 e") == ["etl-1"]
    assert complete("history wf-001 ") == []  # the id is given already
    assert complete("ps --status f") == ["failed"]
    assert complete("watch --e") == ["--exit-on-complete"]
    assert complete("help w") == ["watch"]
    assert complete("export e") == ["etl-1"]
    assert complete("export --format s") == ["speedscope", "svg"]
    assert complete("export -o out.svg w") == ["wf-001", "wf-002"]
    assert complete("roots ") == ["add", "list", "remove"]
    assert complete("roots r") == ["remove"]


# -- for real, in a terminal ---------------------------------------------------------------------


def test_flowctl_without_a_command_opens_the_shell_on_a_terminal(
    traces: Path, tmp_path: Path, start_python: object
) -> None:
    start_workflow(start_python, tmp_path, "wf-live", "block", 120)  # type: ignore[arg-type]
    # The toolbar refreshes on its own: open the shell before the workflow writes anything.
    term = Tmux("flowctl-shell", flowctl_command("--trace-dir", tmp_path))
    try:
        term.wait_for("flowctl>")
        screen = term.wait_for("1 running")  # the toolbar
        assert f"source: files ({tmp_path})" in screen
        term.keys("watch wf-live", "Enter")
        term.wait_for("┌─ wf-live [running]")
        term.keys("C-c")  # leaves the watch, not the shell
        term.wait_for("flowctl>")
        term.keys("ps", "Enter")
        term.wait_for("wf-live   running")
        term.keys("C-d")
        assert "EXIT=0" in term.wait_for("EXIT=")
    finally:
        term.close()


def test_shell_reads_commands_from_a_pipe_without_a_prompt(traces: Path) -> None:
    done = subprocess.run(
        flowctl_command("--trace-dir", traces, "shell"),
        input="ps --status failed\nhistory wf-001 --last 1\nhistory wf-none\n",
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
        check=False,
    )
    assert done.stdout.splitlines()[0].startswith("wf-002    failed")
    assert untimed(done.stdout.splitlines()[1]) == "step   10  completed   result: 30"
    assert "flowctl>" not in done.stdout
    assert done.returncode == exitcodes.NOT_FOUND and "no workflow 'wf-none'" in done.stderr
