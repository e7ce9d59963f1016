"""``flowctl prune``: finished workflows' traces removed, running ones and held locks never,
links never followed; real workflows (finished, failed, killed, running) and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import python_command, python_env
from test_flowctl_cli import start_blocked
from test_flowctl_support import flowctl, put_trace, record_line, write_traces

from flowctl import exitcodes
from flowctl.prune import human_size, parse_duration

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
    write_traces(root, ("wf-done", "complete", 0))
    (root / "wf-link").symlink_to(outside / "wf-elsewhere")
    (root / "wf-done" / "escape").symlink_to(outside / "wf-elsewhere")
    done = prune(root, "--verbose")
    assert done.returncode == exitcodes.OK, done.stderr
    assert "wf-link" not in done.stdout and "skipped wf-link: a symbolic link" in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["wf-link"]  # the link itself is left
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
