"""``flowctl prune``: finished workflows' traces removed, running ones and held locks never,
links never followed; real workflows (finished, failed, killed, running) and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowctl import exitcodes
from flowctl.prune import human_size, parse_duration
from tests.support.flowctl import flowctl
from tests.support.procs import python_command, python_env
from tests.support.traces import put_trace, record_line
from tests.support.workflows import start_blocked, write_traces

# Holds the writer lock of the workflow directory in argv[1] until killed.
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], "writer.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(120)
"""


def dir_bytes(directory: Path) -> int:
    return sum(p.lstat().st_size for p in directory.iterdir())


@pytest.fixture
def traces(tmp_path: Path) -> Iterator[Path]:
    """wf-done (completed), wf-bad (failed), wf-lost (killed -9), wf-live (running),
    wf-old (completed long ago), all under tmp_path / "traces"."""
    root = tmp_path / "traces"
    rotate = {"DOEFF_FLOW_MAX_TRACE_BYTES": "3000", "DOEFF_FLOW_KEEP_ROTATED": "5"}
    write_traces(root, ("wf-done", "complete", 0), ("wf-bad", "fail", 0), env=rotate)
    killed = start_blocked(root, "wf-lost", None)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live = start_blocked(root, "wf-live", None)
    old = record_line("wf-old", 9, status="completed", result="1")
    put_trace(root, "wf-old", old)
    try:
        yield root
    finally:
        live.kill()
        live.wait()


def prune(root: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return flowctl("--trace-dir", root, "prune", *args)


def test_prune_removes_finished_workflows_and_reports_what_it_freed(traces: Path) -> None:
    assert (traces / "wf-done" / "trace.jsonl.1").exists()  # rotated parts go too
    sizes = {name: dir_bytes(traces / name) for name in ("wf-done", "wf-bad", "wf-lost", "wf-old")}
    dry = prune(traces, "--dry-run", "--json")
    assert dry.returncode == exitcodes.OK, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert {i["workflow_id"]: i["bytes"] for i in report["removed"]} == sizes
    assert {i["workflow_id"]: i["status"] for i in report["removed"]} == {
        "wf-bad": "failed",
        "wf-done": "completed",
        "wf-lost": "lost",
        "wf-old": "completed",
    }
    assert report["count"] == 4 and report["bytes"] == sum(sizes.values())
    assert all((traces / name).is_dir() for name in sizes)  # a dry run removes nothing
    text = prune(traces, "--dry-run")
    assert text.stdout.splitlines()[0].startswith("would remove wf-bad ")
    assert text.stdout.splitlines()[-1] == (
        f"would free 4 workflows, {human_size(sum(sizes.values()))} in {traces}"
    )
    done = prune(traces)
    assert done.returncode == exitcodes.OK, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["wf-bad", "wf-done", "wf-lost", "wf-old"]
    assert all(line.startswith("removed ") for line in lines[:-1])
    assert lines[-1] == f"freed 4 workflows, {human_size(sum(sizes.values()))} in {traces}"
    assert sorted(p.name for p in traces.iterdir()) == ["wf-live"]
    ps = flowctl("--trace-dir", traces, "ps")
    assert ps.stdout.startswith("wf-live ") and "running" in ps.stdout
    again = prune(traces)
    assert again.stdout == f"freed 0 workflows, 0 B in {traces}\n"


def test_prune_filters_by_age_and_status(traces: Path) -> None:
    old = prune(traces, "--older-than", "30d", "--json")
    assert [i["workflow_id"] for i in json.loads(old.stdout)["removed"]] == ["wf-old"]
    failed = prune(traces, "--status", "failed,lost", "--json")
    assert [i["workflow_id"] for i in json.loads(failed.stdout)["removed"]] == ["wf-bad", "wf-lost"]
    assert sorted(p.name for p in traces.iterdir()) == ["wf-done", "wf-live"]
    for bad in (["--status", "running"], ["--status", "unknown"], ["--older-than", "7"]):
        refused = prune(traces, *bad)
        assert refused.returncode == exitcodes.USAGE, (bad, refused.stderr)
        assert len(refused.stderr.splitlines()) == 1
    assert sorted(p.name for p in traces.iterdir()) == ["wf-done", "wf-live"]


def test_prune_never_removes_a_workflow_whose_writer_holds_the_lock(traces: Path) -> None:
    holder = subprocess.Popen(
        python_command(HOLD_LOCK, [traces / "wf-done"]),
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        done = prune(traces, "--json", "--status", "completed")
        report = json.loads(done.stdout)
        assert [i["workflow_id"] for i in report["removed"]] == ["wf-old"]
        assert {"workflow_id": "wf-done", "reason": "its writer holds the lock"} in report[
            "skipped"
        ]
        assert (traces / "wf-done" / "trace.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert "wf-done" in prune(traces, "--status", "completed").stdout


def test_prune_never_follows_a_symbolic_link(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_traces(outside, ("wf-elsewhere", "complete", 0))
    write_traces(root, ("wf-done", "complete", 0), ("wf-escape", "complete", 0))
    (root / "wf-link").symlink_to(outside / "wf-elsewhere")
    (root / "wf-escape" / "escape").symlink_to(outside / "wf-elsewhere")
    done = prune(root, "--verbose")
    assert done.returncode == exitcodes.OK, done.stderr
    assert "wf-link" not in done.stdout and "skipped wf-link: a symbolic link" in done.stderr
    assert "skipped wf-escape: escape is a symbolic link, not a trace file" in done.stderr
    # The link itself is left, and so is the workflow holding a link prune does not know.
    assert sorted(p.name for p in root.iterdir()) == ["wf-escape", "wf-link"]
    assert sorted(os.listdir(root / "wf-escape")) == ["escape", "trace.jsonl", "writer.lock"]
    assert sorted(os.listdir(outside / "wf-elsewhere")) == ["trace.jsonl", "writer.lock"]


def test_prune_without_a_trace_directory_and_in_the_default_one(tmp_path: Path) -> None:
    missing = prune(tmp_path / "missing")
    assert missing.returncode == exitcodes.NOT_FOUND and "missing" in missing.stderr
    write_traces(tmp_path / ".doeff-flow", ("wf-1", "complete", 0))
    done = flowctl("prune", cwd=tmp_path)
    assert done.stdout.endswith("freed 1 workflow, " + done.stdout.split(", ")[-1])
    assert not (tmp_path / ".doeff-flow" / "wf-1").exists()


def test_durations() -> None:
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("1.5h").total_seconds() == 5400
    assert parse_duration("7d").days == 7
    assert human_size(512) == "512 B" and human_size(1536) == "1.5 KiB"


# Hostile workflow directories: each case below is a finished workflow (its latest record
# says completed) with something in its directory that prune must neither open, follow
# nor remove. Prune skips that workflow with a reason and prunes the others.
HANG_GUARD = 20  # seconds: a prune that blocks fails the test instead of hanging the suite
FOREIGN_UID = 65534  # nobody


def finished(root: Path, workflow_id: str, *, parts: int = 0) -> Path:
    """A completed workflow written as the writer leaves it: trace.jsonl, ``parts``
    rotated parts and writer.lock."""
    directory = put_trace(root, workflow_id, record_line(workflow_id, 9, status="completed")).parent
    for number in range(1, parts + 1):
        (directory / f"trace.jsonl.{number}").write_text(record_line(workflow_id, 9 - number))
    (directory / "writer.lock").write_text("")
    return directory


def fifo_lock(directory: Path, outside: Path) -> None:
    (directory / "writer.lock").unlink()
    os.mkfifo(directory / "writer.lock")


def linked_lock(directory: Path, outside: Path) -> None:
    (directory / "writer.lock").unlink()
    (directory / "writer.lock").symlink_to(outside)


def directory_lock(directory: Path, outside: Path) -> None:
    (directory / "writer.lock").unlink()
    (directory / "writer.lock").mkdir()


def fifo_trace(directory: Path, outside: Path) -> None:
    (directory / "trace.jsonl.1").rename(directory / "trace.jsonl.2")
    (directory / "trace.jsonl").rename(directory / "trace.jsonl.1")
    os.mkfifo(directory / "trace.jsonl")


def linked_part(directory: Path, outside: Path) -> None:
    (directory / "trace.jsonl.2").symlink_to(outside)


def directory_part(directory: Path, outside: Path) -> None:
    (directory / "trace.jsonl.2").mkdir()
    (directory / "trace.jsonl.2" / "kept").write_text("kept")


def unknown_file(directory: Path, outside: Path) -> None:
    (directory / "notes.txt").write_text("mine")


def unknown_link(directory: Path, outside: Path) -> None:
    (directory / "escape").symlink_to(outside.parent)


def subdirectory(directory: Path, outside: Path) -> None:
    (directory / "sub").mkdir()
    (directory / "sub" / "trace.jsonl").write_text("kept")


def unknown_fifo(directory: Path, outside: Path) -> None:
    os.mkfifo(directory / "pipe")


def foreign_directory(directory: Path, outside: Path) -> None:
    os.chown(directory, FOREIGN_UID, FOREIGN_UID)


def foreign_part(directory: Path, outside: Path) -> None:
    os.chown(directory / "trace.jsonl.1", FOREIGN_UID, FOREIGN_UID)


def foreign_lock(directory: Path, outside: Path) -> None:
    os.chown(directory / "writer.lock", FOREIGN_UID, FOREIGN_UID)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
HOSTILE = [
    pytest.param(fifo_lock, "writer.lock is a FIFO, not a regular file", id="fifo-lock"),
    pytest.param(
        linked_lock, "writer.lock is a symbolic link, not a regular file", id="linked-lock"
    ),
    pytest.param(
        directory_lock, "writer.lock is a directory, not a regular file", id="directory-lock"
    ),
    pytest.param(fifo_trace, "trace.jsonl is a FIFO, not a regular file", id="fifo-trace"),
    pytest.param(
        linked_part, "trace.jsonl.2 is a symbolic link, not a regular file", id="linked-part"
    ),
    pytest.param(
        directory_part, "trace.jsonl.2 is a directory, not a regular file", id="directory-part"
    ),
    pytest.param(unknown_file, "notes.txt is a regular file, not a trace file", id="unknown"),
    pytest.param(unknown_link, "escape is a symbolic link, not a trace file", id="unknown-link"),
    pytest.param(subdirectory, "sub is a directory, not a trace file", id="subdirectory"),
    pytest.param(unknown_fifo, "pipe is a FIFO, not a trace file", id="unknown-fifo"),
    pytest.param(
        foreign_directory,
        f"owned by another user (uid {FOREIGN_UID})",
        id="foreign-directory",
        marks=needs_root,
    ),
    pytest.param(
        foreign_part,
        f"trace.jsonl.1 is owned by another user (uid {FOREIGN_UID})",
        id="foreign-part",
        marks=needs_root,
    ),
    pytest.param(
        foreign_lock,
        f"writer.lock is owned by another user (uid {FOREIGN_UID})",
        id="foreign-lock",
        marks=needs_root,
    ),
]


def listing(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every name under ``directory`` (links not followed) with its mode, owner and size."""
    found: dict[str, tuple[int, int, int]] = {}
    for path in [directory, *directory.rglob("*")]:
        status = path.lstat()
        found[str(path.relative_to(directory))] = (status.st_mode, status.st_uid, status.st_size)
    return found


def guarded_prune(root: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """``flowctl prune`` that fails the test if it blocks; it must exit OK, quietly."""
    done = flowctl("--trace-dir", root, "prune", *args, timeout=HANG_GUARD)
    assert done.returncode == exitcodes.OK, done.stderr
    assert "Traceback" not in done.stderr
    return done


@pytest.mark.parametrize(("make_hostile", "reason"), HOSTILE)
def test_prune_skips_a_hostile_workflow_and_prunes_the_others(
    tmp_path: Path, make_hostile: Callable[[Path, Path], None], reason: str
) -> None:
    root, outside = tmp_path / "traces", tmp_path / "outside" / "victim"
    outside.parent.mkdir()
    outside.write_text("not yours to remove\n")
    finished(root, "wf-a", parts=2)
    bad = finished(root, "wf-bad", parts=1)
    finished(root, "wf-z")
    make_hostile(bad, outside)
    before = listing(bad)

    dry = json.loads(guarded_prune(root, "--dry-run", "--json").stdout)
    assert [i["workflow_id"] for i in dry["removed"]] == ["wf-a", "wf-z"]
    assert dry["skipped"] == [{"workflow_id": "wf-bad", "reason": reason}]

    done = guarded_prune(root, "--verbose")
    assert [line.split()[1] for line in done.stdout.splitlines()[:-1]] == ["wf-a", "wf-z"]
    assert done.stderr == f"flowctl: skipped wf-bad: {reason}\n"
    assert sorted(p.name for p in root.iterdir()) == ["wf-bad"]
    assert listing(bad) == before  # nothing in it removed, opened for writing or followed
    assert outside.read_text() == "not yours to remove\n"


def test_prune_removes_only_a_workflow_s_own_files_through_its_directory(tmp_path: Path) -> None:
    """A workflow directory that is a link is left with what it points to; a real one
    holding the trace, every rotated part and the lock goes entirely."""
    root, outside = tmp_path / "traces", tmp_path / "outside"
    target = finished(outside, "wf-target", parts=3)
    finished(root, "wf-real", parts=3)
    (root / "wf-linked").symlink_to(target)
    before = listing(target)
    report = json.loads(guarded_prune(root, "--json").stdout)
    assert [i["workflow_id"] for i in report["removed"]] == ["wf-real"]
    assert report["skipped"] == [
        {"workflow_id": "wf-linked", "reason": "a symbolic link, not followed"}
    ]
    assert sorted(p.name for p in root.iterdir()) == ["wf-linked"]
    assert listing(target) == before


def test_prune_does_not_block_on_a_fifo_trace_alone(tmp_path: Path) -> None:
    """A workflow whose only trace is a FIFO has no status: never read, never removed."""
    root = tmp_path / "traces"
    finished(root, "wf-good")
    (root / "wf-fifo").mkdir()
    os.mkfifo(root / "wf-fifo" / "trace.jsonl")
    for args in (["--dry-run", "--json"], ["--json"]):
        report = json.loads(guarded_prune(root, *args).stdout)
        assert [i["workflow_id"] for i in report["removed"]] == ["wf-good"]
        assert report["skipped"] == [
            {"workflow_id": "wf-fifo", "reason": "trace.jsonl is a FIFO, not a regular file"}
        ]
    assert sorted(os.listdir(root / "wf-fifo")) == ["trace.jsonl"]


def test_prune_names_hostile_file_names_escaped(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    bad = finished(root, "wf-bad")
    (bad / "\x1b]0;pwned\x07\u202e").write_text("x")
    done = guarded_prune(root, "--verbose", "--dry-run")
    assert done.stderr == (
        "flowctl: skipped wf-bad: \\x1b]0;pwned\\x07\\u202e is a regular file, not a trace file\n"
    )


def test_prune_is_quick_on_a_sparse_terabyte_trace(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    huge = finished(root, "wf-huge") / "trace.jsonl"
    os.truncate(huge, 1 << 40)  # truncate -s 1T: the record, then a hole
    finished(root, "wf-small")
    started = time.monotonic()
    dry = json.loads(guarded_prune(root, "--dry-run", "--json").stdout)
    assert time.monotonic() - started < 5
    assert {i["workflow_id"]: i["status"] for i in dry["removed"]} == {
        "wf-huge": "completed",
        "wf-small": "completed",
    }
    assert dry["removed"][0]["bytes"] < 1 << 20  # the blocks it frees, not its apparent size
    started = time.monotonic()
    guarded_prune(root)
    assert time.monotonic() - started < 5
    assert list(root.iterdir()) == []
