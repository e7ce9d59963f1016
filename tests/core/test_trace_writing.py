"""The writer's files: private modes, no links followed, nobody else's files written,
a workflow directory removed mid-run recreated with its lock."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from doeff import Get, Put, do

from doeff_flow_core import BadTraceSetting, TraceDirUnwritable, run_workflow, trace_observer
from doeff_flow_core.tracefiles.reading import read_all
from doeff_flow_core.tracefiles.writing import Rotation, TraceWriter

NOBODY = 65534


@do
def counting(n: int) -> Any:
    for i in range(n):
        yield Put("x", i)
    return (yield Get("x"))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def loose_umask() -> Any:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_traces_are_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    root = tmp_path / "traces"
    assert run_workflow(counting(3), "wf", root).is_ok()
    assert mode(root) == 0o700
    assert mode(root / "wf") == 0o700
    assert mode(root / "wf" / "trace.jsonl") == 0o600
    assert mode(root / "wf" / "writer.lock") == 0o600


def test_a_team_shares_traces_with_its_group(
    tmp_path: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOEFF_FLOW_TRACE_MODE", "640")
    assert run_workflow(counting(3), "wf", tmp_path / "t").is_ok()
    assert mode(tmp_path / "t" / "wf") == 0o750
    assert mode(tmp_path / "t" / "wf" / "trace.jsonl") == 0o640
    assert run_workflow(counting(3), "wf2", tmp_path / "u", trace_mode=0o660).is_ok()
    assert mode(tmp_path / "u" / "wf2" / "trace.jsonl") == 0o660


@pytest.mark.parametrize("bad", ["777", "rw", "0400", "646"])
def test_a_bad_trace_mode_is_refused_before_anything_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("DOEFF_FLOW_TRACE_MODE", bad)
    with pytest.raises(BadTraceSetting, match="DOEFF_FLOW_TRACE_MODE"):
        run_workflow(counting(1), "wf", tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("name", ["trace.jsonl", "writer.lock"])
def test_a_symlinked_file_is_never_written_through(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "t" / "wf").mkdir(parents=True)
    (tmp_path / "t" / "wf" / name).symlink_to(victim)
    ran: list[bool] = []

    @do
    def body() -> Any:
        ran.append(True)
        return (yield Get("x"))

    with pytest.raises(TraceDirUnwritable, match="symbolic link"):
        run_workflow(body(), "wf", tmp_path / "t")
    assert victim.read_text() == "precious\n" and ran == []


def test_a_symlinked_workflow_directory_is_never_written_into(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "wf").symlink_to(private)
    with pytest.raises(TraceDirUnwritable, match="symbolic link"):
        run_workflow(counting(1), "wf", tmp_path / "t")
    assert list(private.iterdir()) == []


def test_a_fifo_lock_or_trace_is_refused_without_blocking(tmp_path: Path) -> None:
    for name in ("writer.lock", "trace.jsonl"):
        directory = tmp_path / name / "wf"
        directory.mkdir(parents=True)
        os.mkfifo(directory / name)
        with pytest.raises(TraceDirUnwritable, match="FIFO"):
            TraceWriter(tmp_path / name, "wf")


def test_a_trace_dir_anyone_can_write_needs_the_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(TraceDirUnwritable, match="without the sticky bit"):
        run_workflow(counting(1), "wf", shared)
    shared.chmod(0o1777)
    assert run_workflow(counting(1), "wf", shared).is_ok()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_another_users_workflow_directory_or_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "theirs").mkdir(parents=True)
    os.chown(root / "theirs", NOBODY, NOBODY)
    with pytest.raises(TraceDirUnwritable, match="another user"):
        run_workflow(counting(1), "theirs", root)
    (root / "mine").mkdir()
    (root / "mine" / "trace.jsonl").write_text("")
    os.chown(root / "mine" / "trace.jsonl", NOBODY, NOBODY)
    with pytest.raises(TraceDirUnwritable, match="another user"):
        run_workflow(counting(1), "mine", root)


def test_a_workflow_directory_removed_mid_run_is_recreated_with_its_lock(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "t"
    writer = TraceWriter(root, "wf", Rotation())
    writer.write('{"a":1}\n')
    subprocess.run(["rm", "-rf", str(root / "wf")], check=True)
    writer.write('{"a":2}\n')
    assert (root / "wf" / "writer.lock").exists()
    with pytest.raises(Exception, match="already being traced"):
        TraceWriter(root, "wf")  # the recreated directory is locked again
    writer.close()
    assert (root / "wf" / "trace.jsonl").read_text() == '{"a":2}\n'
    assert "was removed" in capfd.readouterr().err


def test_two_runs_never_interleave_after_the_directory_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "t"
    first = TraceWriter(root, "wf")
    first.write('{"run":1}\n')
    subprocess.run(["rm", "-rf", str(root / "wf")], check=True)
    second = TraceWriter(root, "wf")  # the directory is free: a second run takes it
    second.write('{"run":2}\n')
    first.write('{"run":1}\n')  # the first finds it taken and stops
    second.write('{"run":2}\n')
    assert first.failed is not None
    first.close()
    second.close()
    assert (root / "wf" / "trace.jsonl").read_text() == '{"run":2}\n' * 2


def test_a_torn_tail_is_cut_and_a_trace_observer_appends(tmp_path: Path) -> None:
    root = tmp_path / "t"
    assert run_workflow(counting(2), "wf", root).is_ok()
    trace = root / "wf" / "trace.jsonl"
    with open(trace, "ab") as handle:
        handle.write(b'{"torn')
    with trace_observer("wf", root):
        pass
    tail = read_all(trace)
    assert tail.skipped == 0 and not tail.torn
