"""Bad input refused before anything runs: invalid workflow ids, unwritable trace directories."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doeff
import pytest
from doeff import Get, Put, do
from doeff_core_effects import state

from doeff_flow_core import (
    InvalidWorkflowId,
    TraceDirUnwritable,
    run_workflow,
    trace_observer,
    validate_workflow_id,
)
from doeff_flow_core.liveness import derive_status, process_alive, this_host

BAD_IDS = [
    ("../x", "character outside the allowed set"),
    ("a/b", "character outside the allowed set"),
    ("", "must not be empty"),
    ("x" * 256, "longer than 255 characters"),
    ("has space", "character outside the allowed set"),
    ("tab\there", "character outside the allowed set"),
    ("wf-1\n", "character outside the allowed set"),
    ("..", "character outside the allowed set"),
    ("é", "character outside the allowed set"),
    (42, "must be a string, not int"),
    (None, "must be a string, not NoneType"),
    (b"wf", "must be a string, not bytes"),
]


def make_program(ran: list[str]) -> Any:
    """A real workflow whose body records (in Python) that it ran."""

    def note(what: str) -> None:
        ran.append(what)

    @do
    def body() -> Any:
        note("started")
        value = yield Get("k")
        yield Put("k", value)
        return value

    return body()


def run_with_trace_observer(program: Any, workflow_id: Any, trace_dir: Path) -> Any:
    with trace_observer(workflow_id, trace_dir) as observe:
        return doeff.run(state()(observe(program)))


def run_with_run_workflow(program: Any, workflow_id: Any, trace_dir: Path) -> Any:
    return run_workflow(program, workflow_id, trace_dir)


ENTRY_POINTS = [run_with_run_workflow, run_with_trace_observer]


@pytest.mark.parametrize(("bad", "rule"), BAD_IDS)
def test_validate_workflow_id_names_the_rule(bad: object, rule: str) -> None:
    with pytest.raises(InvalidWorkflowId) as info:
        validate_workflow_id(bad)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert rule in message
    assert "A-Z, a-z, 0-9, '_' and '-'" in message
    assert info.value.workflow_id == bad


@pytest.mark.parametrize("good", ["a", "wf-001", "A_b-9", "x" * 255, "-", "_"])
def test_validate_workflow_id_accepts_the_allowed_set(good: str) -> None:
    assert validate_workflow_id(good) == good


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(("bad", "rule"), BAD_IDS[:6] + BAD_IDS[9:10])
def test_invalid_id_refused_before_any_file(
    tmp_path: Path, state_home: Path, entry: Callable[..., Any], bad: object, rule: str
) -> None:
    trace_dir = tmp_path / "traces"
    ran: list[str] = []
    with pytest.raises(InvalidWorkflowId, match=rule):
        entry(make_program(ran), bad, trace_dir)
    assert ran == []
    assert not trace_dir.exists()
    assert not (tmp_path / "x").exists()  # "../x" resolved next to the trace dir
    assert list(state_home.iterdir()) == []  # nothing registered either


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_invalid_id_with_existing_trace_dir_leaves_it_empty(
    tmp_path: Path, entry: Callable[..., Any]
) -> None:
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    ran: list[str] = []
    with pytest.raises(InvalidWorkflowId):
        entry(make_program(ran), "../escape", trace_dir)
    assert ran == []
    assert list(trace_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces"]


def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory\n")
    return blocker / "traces"


def _trace_file_is_a_directory(tmp_path: Path) -> Path:
    trace_dir = tmp_path / "traces"
    (trace_dir / "wf-unwritable" / "trace.jsonl").mkdir(parents=True)
    return trace_dir


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("layout", [_under_a_file, _trace_file_is_a_directory])
def test_unwritable_trace_dir_fails_before_the_body_runs(
    tmp_path: Path,
    state_home: Path,
    entry: Callable[..., Any],
    layout: Callable[[Path], Path],
) -> None:
    trace_dir = layout(tmp_path)
    ran: list[str] = []
    with pytest.raises(TraceDirUnwritable) as info:
        entry(make_program(ran), "wf-unwritable", trace_dir)
    assert ran == []
    assert isinstance(info.value, OSError)
    message = str(info.value)
    assert message.startswith("cannot write traces under ")
    assert str(trace_dir) in message
    assert list(state_home.iterdir()) == []  # a failed start registers nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode")
def test_read_only_trace_dir_fails_before_the_body_runs(tmp_path: Path) -> None:
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir(mode=0o500)
    ran: list[str] = []
    try:
        with pytest.raises(TraceDirUnwritable, match="Permission denied"):
            run_workflow(make_program(ran), "wf-ro", trace_dir)
    finally:
        trace_dir.chmod(0o700)
    assert ran == []


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_the_probe_body_runs_when_the_trace_dir_is_fine(
    tmp_path: Path, entry: Callable[..., Any]
) -> None:
    # Control for the tests above: the same program does run, so `ran == []` means something.
    ran: list[str] = []
    entry(make_program(ran), "wf-fine", tmp_path / "traces")
    assert ran == ["started"]
    assert (tmp_path / "traces" / "wf-fine" / "trace.jsonl").stat().st_size > 0


@pytest.mark.parametrize("pid", [0, -1, 2**31, 2**70])
def test_a_pid_no_process_can_have_is_not_alive(pid: int) -> None:
    assert not process_alive(pid)
    assert derive_status("running", pid, this_host(), None) == "lost"


def test_this_process_is_alive() -> None:
    assert process_alive(os.getpid())
