"""Every flowctl command over a trace directory holding hostile files: it answers, says
what it could not read, reads nothing outside the directory, and never hangs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.flowctl import flowctl
from tests.support.traces import record_line

TIB = 1 << 40
SECRET = "secret-marker-7f3a"


def hostile(root: Path, outside: Path) -> None:
    outside.mkdir()
    (outside / "trace.jsonl").write_text(record_line("wf-out", 1, current_effect=SECRET) + "\n")
    for name in ("wf-good", "wf-fifo", "wf-fifo-lock", "wf-link-lock", "wf-sparse", "wf-link"):
        (root / name).mkdir(parents=True)
    for name in ("wf-good", "wf-fifo-lock", "wf-link-lock"):
        (root / name / "trace.jsonl").write_text(record_line(name, 1, status="completed") + "\n")
    os.mkfifo(root / "wf-fifo" / "trace.jsonl")
    os.mkfifo(root / "wf-fifo-lock" / "writer.lock")
    (root / "wf-link-lock" / "writer.lock").symlink_to(outside / "trace.jsonl")
    (root / "wf-link" / "trace.jsonl").symlink_to(outside / "trace.jsonl")
    with open(root / "wf-sparse" / "trace.jsonl", "wb") as handle:
        handle.write(record_line("wf-sparse", 1, status="completed").encode() + b"\n")
        handle.truncate(TIB)


COMMANDS = [
    ["ps"],
    ["--json", "ps"],
    *(["history", name] for name in ("wf-fifo", "wf-sparse", "wf-link", "wf-good")),
    *(["watch", name, "--exit-on-complete"] for name in ("wf-fifo", "wf-link", "wf-sparse")),
    *(["export", name, "-o", "{out}"] for name in ("wf-fifo", "wf-sparse", "wf-link")),
    ["prune", "--dry-run"],
    ["prune"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_answers_over_hostile_files(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "traces"
    hostile(root, tmp_path / "outside")
    before = (tmp_path / "outside" / "trace.jsonl").read_bytes()
    args = [part.replace("{out}", str(tmp_path / "out.json")) for part in command]
    try:
        done = flowctl("--trace-dir", root, *args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowctl {' '.join(command)} hung")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode != 70, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert (tmp_path / "outside" / "trace.jsonl").read_bytes() == before
    if command[-1] == "ps":
        assert "wf-good" in done.stdout and "wf-sparse" in done.stdout
    if command[0] == "prune" and command[-1] == "prune":
        assert not (root / "wf-good").exists()  # the others are pruned all the same
        assert (root / "wf-fifo-lock").exists() and (root / "wf-link-lock").exists()
