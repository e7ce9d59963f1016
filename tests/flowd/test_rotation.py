"""flowd and rotated traces, through a real daemon and real workflows writing with a small
``DOEFF_FLOW_MAX_TRACE_BYTES``: watchers get every record once and in order across many
rotations (live, and a client that falls behind), a watch resumed with ``after`` finds
its step in the rotated parts (the rotation happened while flowd was down), ``history``
reads across parts and counts what it skipped; workflow directories and traces that are
symbolic links (or FIFOs) are not followed, and ``roots.add`` roots survive a restart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowd.daemon import Daemon
from flowd.watching import IN_MOVED_FROM, IN_MOVED_TO, Event
from tests.support.flowd import flowd, summary_of
from tests.support.procs import wait_for
from tests.support.rpc import Client
from tests.support.traces import raw_lines, steps_of
from tests.support.workflows import finish, run_workflow_to_end, workflow

SMALL = {"DOEFF_FLOW_MAX_TRACE_BYTES": "6000", "DOEFF_FLOW_KEEP_ROTATED": "500"}


def chain(directory: Path) -> list[Path]:
    """The trace files of a workflow, oldest first."""
    parts = sorted(
        (p for p in directory.glob("trace.jsonl.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*parts, directory / "trace.jsonl"]


def all_records(directory: Path) -> list[dict[str, Any]]:
    found = []
    for path in chain(directory):
        for line in path.read_bytes().split(b"\n")[:-1]:
            if line.strip():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
    return found


def receive_until_completed(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    got = client.traces_until(workflow_id)
    return [p["record"] for p in got if p["workflow_id"] == workflow_id]


def env_of(state: Path, **extra: str) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(state), **SMALL, **extra}


@pytest.mark.parametrize("watcher", ["inotify", "poll"])
def test_watchers_get_every_record_once_across_rotations(tmp_path: Path, watcher: str) -> None:
    root = tmp_path / "traces"
    root.mkdir()
    state = tmp_path / "state"
    with flowd("--root", root, "--watcher", watcher, state=state) as daemon:
        with daemon.client() as early, daemon.client() as slow:
            early.call("watch", workflow_id="wf-rot")
            slow.call("watch", workflow_id="wf-rot")
            proc = workflow(root, "wf-rot", 400, 0.004, env=env_of(state))
            slow.sock.settimeout(30)
            time.sleep(1.5)  # the slow client reads nothing while the parts go by
            received = receive_until_completed(early, "wf-rot")
            received_slow = receive_until_completed(slow, "wf-rot")
            finish(proc)
        stored = all_records(root / "wf-rot")
        assert len(chain(root / "wf-rot")) > 10  # many rotations
        assert received == stored
        assert received_slow == stored
        with daemon.client() as late:  # the latest record, then nothing more
            late.call("watch", workflow_id="wf-rot")
            assert late.trace()["record"] == stored[-1]


def test_a_watch_resumed_after_a_rotation_while_flowd_was_down(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    state = tmp_path / "state"
    run_workflow_to_end(root, "wf-down", 60, delay=0.025, env=env_of(state))
    stored = all_records(root / "wf-down")
    parts = chain(root / "wf-down")
    assert len(parts) > 4
    oldest = [json.loads(line) for line in parts[1].read_bytes().split(b"\n")[:-1]]
    seen = oldest[2]  # a step left in an old rotated part
    with flowd("--root", root, state=state) as daemon, daemon.client() as client:
        after = {"run": seen["run"], "step": seen["step"]}
        client.call("watch", workflow_id="wf-down", after=after)
        received = receive_until_completed(client, "wf-down")
        assert received == stored[stored.index(seen) + 1 :]
        # a run no part holds: every record from the first one kept
        with daemon.client() as other:
            other.call("watch", workflow_id="wf-down", after={"run": "nope", "step": 3})
            assert receive_until_completed(other, "wf-down") == stored


def test_history_reads_across_parts_and_counts_what_it_skipped(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    state = tmp_path / "state"
    run_workflow_to_end(root, "wf-hist", 40, delay=0.025, env=env_of(state))
    parts = chain(root / "wf-hist")
    with parts[-2].open("ab") as handle:  # damage the newest rotated part
        handle.write(b"{not json\n\0\0\0\n")
    stored = all_records(root / "wf-hist")
    newest = len(all_records_of(parts[-1]))
    before = listing(root)
    with flowd("--root", root, state=state) as daemon, daemon.client() as client:
        few = client.call("history", workflow_id="wf-hist", last=newest)
        assert [json.loads(json.dumps(r)) for r in few["records"]] == stored[-newest:]
        assert few["skipped"] == 0
        more = client.call("history", workflow_id="wf-hist", last=newest + 5)
        assert more["records"] == stored[-newest - 5 :]
        assert more["skipped"] == 2
        every = client.call("history", workflow_id="wf-hist", last=10000)
        assert every["records"] == stored
        assert steps_of(every["records"]) == sorted(steps_of(every["records"]))
    assert listing(root) == before  # flowd wrote nothing into the trace directory


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(path): (path.lstat().st_size, path.lstat().st_mtime_ns) for path in root.rglob("*")}


def all_records_of(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def test_symlinks_and_fifos_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    outside = tmp_path / "outside"
    state = tmp_path / "state"
    run_workflow_to_end(outside, "wf-out", 1, env={"XDG_STATE_HOME": str(tmp_path / "o")})
    run_workflow_to_end(root, "wf-real", 1, env={"XDG_STATE_HOME": str(state)})
    (root / "wf-link").symlink_to(outside / "wf-out", target_is_directory=True)
    (root / "wf-file").mkdir()
    (root / "wf-file" / "trace.jsonl").symlink_to(outside / "wf-out" / "trace.jsonl")
    (root / "wf-fifo").mkdir()
    os.mkfifo(root / "wf-fifo" / "trace.jsonl")
    with flowd("--root", root, state=state) as daemon, daemon.client() as client:
        (root / "wf-late").symlink_to(outside / "wf-out", target_is_directory=True)
        # a directory made after the link: once flowd has it, it has looked at the link
        (root / "wf-marker").mkdir()
        wait_for(lambda: summary_of(client, "wf-marker"), what="wf-marker")
        (root / "wf-marker").rmdir()
        wait_for(lambda: summary_of(client, "wf-marker") is None, what="wf-marker gone")
        found = {w["workflow_id"]: w for w in client.call("ps")["workflows"]}
        assert set(found) == {"wf-real", "wf-file", "wf-fifo"}
        assert found["wf-file"]["record"] is None
        assert "symbolic link" in found["wf-file"]["problem"]
        assert found["wf-fifo"]["record"] is None
        assert found["wf-fifo"]["problem"] == "not a regular file (a FIFO)"
        error = client.error("history", {"workflow_id": "wf-file"})
        assert error["code"] == -32004
        assert client.call("ping")["workflows"] == 3  # still answering


def test_roots_added_are_remembered_across_restarts(tmp_path: Path) -> None:
    added = tmp_path / "added"
    state = tmp_path / "state"
    run_workflow_to_end(added, "wf-added", 1, env={"XDG_STATE_HOME": str(tmp_path / "x")})
    with flowd(state=state) as daemon, daemon.client() as client:
        assert client.call("roots.add", path=str(added))["added"] is True
    assert (state / "doeff-flow" / "flowd-roots").read_text() == f"{added}\n"
    with flowd(state=state) as daemon, daemon.client() as client:
        roots = client.call("roots.list")["roots"]
        assert [(r["origin"], r["workflows"]) for r in roots if r["path"] == str(added)] == [
            ("rpc", 1)
        ]
        wait_for(lambda: client.request("get", {"workflow_id": "wf-added"}).get("result"))


def test_a_rotation_event_seen_after_the_rotation_was_followed_reads_nothing_again(
    tmp_path: Path,
) -> None:
    """The move of trace.jsonl to .1 reported by inotify after a refresh had already
    followed the rotation (a stat saw it first) is not a replacement: the new trace.jsonl
    is not read again from its start (live watchers got its records twice, and pumps
    still in older parts jumped ahead to it: records lost)."""
    base = tmp_path / "src"
    run_workflow_to_end(base, "wf-src", 6, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    lines = raw_lines(base / "wf-src" / "trace.jsonl")
    assert len(lines) >= 4
    root = Path(os.path.realpath(tmp_path / "root"))
    (root / "wf-1").mkdir(parents=True)
    trace = root / "wf-1" / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines[:2]) + b"\n")
    daemon = Daemon([str(root)], watcher="poll")
    anyio.run(daemon.load)
    entry = daemon.index.resolve("wf-1")
    assert entry is not None
    os.replace(trace, root / "wf-1" / "trace.jsonl.1")  # the writer rotates
    trace.write_bytes(lines[2] + b"\n")
    update = daemon.index.read_now(entry)  # follows the rotation: the rest of .1 (nothing)
    while entry.behind or update is None or not update.lines:
        update = daemon.index.read_now(entry)
    assert [line.raw for line in update.lines] == [lines[2]]
    gen = entry.gen
    # now the events of that rotation arrive
    daemon._on_entry_event(entry, Event(entry.track.watch, IN_MOVED_FROM, 7, "trace.jsonl"))
    daemon._on_entry_event(entry, Event(entry.track.watch, IN_MOVED_TO, 7, "trace.jsonl.1"))
    with trace.open("ab") as handle:
        handle.write(lines[3] + b"\n")
    update = daemon.index.read_now(entry)
    assert update is not None and not update.reset and entry.gen == gen
    assert [line.raw for line in update.lines] == [lines[3]]
    # a move elsewhere (no rotated part takes the file) still counts as a replacement
    daemon._on_entry_event(entry, Event(entry.track.watch, IN_MOVED_FROM, 8, "trace.jsonl"))
    assert entry.track.replaced
