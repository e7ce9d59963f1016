"""Watching and indexing through a real daemon: subscriptions (snapshot, every record in
order, waiting, replay, all workflows), discovery through the registry, and traces that
are truncated, rotated, deleted, torn, damaged or doubled under two roots. Every test
runs twice: with inotify, and with polling (``--watcher poll``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.flowd import Flowd, flowd
from tests.support.procs import wait_for
from tests.support.rpc import Client
from tests.support.traces import raw_lines, records, steps_of
from tests.support.workflows import finish, run_workflow_to_end, workflow


class World:
    def __init__(self, base: Path, daemon: Flowd, template: list[bytes], watcher: str) -> None:
        self.base = base
        self.watcher = watcher
        self.root = Path(os.path.realpath(base / "traces"))
        self.state = base / "state"
        self.env = {"XDG_STATE_HOME": str(self.state)}
        self.daemon = daemon
        self.template = template  # the lines of a real trace, to write by hand

    def trace(self, workflow_id: str, root: Path | None = None) -> Path:
        return (root or self.root) / workflow_id / "trace.jsonl"

    def lines_of(self, workflow_id: str) -> list[bytes]:
        """The template's lines as ``workflow_id``'s own (a record naming another
        workflow than its directory is a problem)."""
        named = json.dumps(workflow_id).encode()
        return [line.replace(b'"template"', named, 1) for line in self.template]


@pytest.fixture(scope="module", params=["inotify", "poll"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    base = tmp_path_factory.mktemp(f"flowd-watch-{request.param}")
    state = base / "state"
    run_workflow_to_end(base / "traces", "template", 4, env={"XDG_STATE_HOME": str(state)})
    template = raw_lines(base / "traces" / "template" / "trace.jsonl")
    daemon = Flowd("--watcher", request.param, "--stall-timeout", "1", state=state)
    try:
        yield World(base, daemon, template, request.param)
    finally:
        daemon.cleanup()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workflows a test started; whatever still runs afterwards (a test failed while it
    waited at its gate) is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture
def client(world: World) -> Iterator[Client]:
    with world.daemon.client() as c:
        yield c


def in_order(received: list[dict[str, Any]], path: Path) -> None:
    """``received`` is a run of the file's records: from one of them to the end, none
    missing, none repeated."""
    stored = records(path)
    assert received, "nothing received"
    assert received[0] in stored
    start = stored.index(received[0])
    assert received == stored[start:]


def watch(client: Client, **params: Any) -> str:
    subscription = client.call("watch", **params)["subscription"]
    assert isinstance(subscription, str)
    return subscription


def test_watch_sends_the_latest_record_then_every_new_one_in_order(
    world: World, client: Client, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    gate = tmp_path / "go"
    proc = workflow(world.root, "wf-watch", 8, delay=0.01, gate=gate, hold=3, env=world.env)
    started.append(proc)
    trace = world.trace("wf-watch")
    wait_for(lambda: trace.exists() and len(records(trace)) >= 9, what="three steps")
    # blocked at the gate: once flowd has its latest record, that is the snapshot
    wait_for(lambda: latest(client, "wf-watch") == records(trace)[-1], what="indexed")
    sub = watch(client, workflow_id="wf-watch")
    first = client.trace()
    assert first["subscription"] == sub
    assert first["workflow_id"] == "wf-watch"
    assert first["root"] == str(world.root)
    assert first["record"] == records(trace)[-1]
    gate.touch()
    received = [first, *client.traces_until("wf-watch")]
    finish(proc)
    assert all(item["subscription"] == sub for item in received)
    in_order([item["record"] for item in received], trace)


def test_watching_a_workflow_that_does_not_exist_yet_waits_for_it(
    world: World, client: Client
) -> None:
    sub = watch(client, workflow_id="wf-late")
    assert client.call("ping")  # answered while the watch waits
    run_workflow_to_end(world.root, "wf-late", 3, delay=0.01, env=world.env)
    received = client.traces_until("wf-late")
    assert {item["subscription"] for item in received} == {sub}
    assert received[0]["record"]["step"] == 1  # from its first record
    in_order([item["record"] for item in received], world.trace("wf-late"))


def test_watch_after_a_step_replays_the_rest_of_that_run(world: World, client: Client) -> None:
    run_workflow_to_end(world.root, "wf-replay", 5, env=world.env)
    stored = records(world.trace("wf-replay"))
    # read to the end: a resume point past what flowd has read is not found
    wait_for(lambda: latest(client, "wf-replay") == stored[-1], what="indexed")
    run = stored[0]["run"]
    watch(client, workflow_id="wf-replay", after={"run": run, "step": 6})
    received = [client.trace()["record"] for _ in range(len(stored) - 6)]
    assert received == stored[6:]
    # a run the file does not hold: everything, from the first record
    watch(client, workflow_id="wf-replay", after={"run": "not-a-run", "step": 3})
    assert [client.trace()["record"] for _ in stored] == stored


def test_watch_after_a_step_then_live_while_the_workflow_runs(
    world: World, client: Client, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    gate = tmp_path / "go"
    proc = workflow(world.root, "wf-resume", 8, delay=0.01, gate=gate, hold=4, env=world.env)
    started.append(proc)
    trace = world.trace("wf-resume")
    wait_for(lambda: trace.exists() and len(records(trace)) >= 12, what="four steps")
    # blocked at the gate: read to there, so step 2 is found among what flowd has read
    wait_for(lambda: latest(client, "wf-resume") == records(trace)[-1], what="indexed")
    run = records(trace)[0]["run"]
    watch(client, workflow_id="wf-resume", after={"run": run, "step": 2})
    gate.touch()
    received = client.traces_until("wf-resume")
    finish(proc)
    steps = steps_of([item["record"] for item in received])
    assert steps[0] == 3
    in_order([item["record"] for item in received], trace)


def test_watch_after_the_last_step_sends_only_new_records(world: World, client: Client) -> None:
    run_workflow_to_end(world.root, "wf-caught-up", 2, env=world.env)
    stored = records(world.trace("wf-caught-up"))
    wait_for(lambda: latest(client, "wf-caught-up") == stored[-1], what="indexed")
    last = stored[-1]
    watch(client, workflow_id="wf-caught-up", after={"run": last["run"], "step": last["step"]})
    run_workflow_to_end(world.root, "wf-caught-up", 2, env=world.env)  # a re-run appends
    received = client.traces_until("wf-caught-up")
    rerun = records(world.trace("wf-caught-up"))[len(stored) :]
    assert [item["record"] for item in received] == rerun
    assert rerun[0]["run"] != last["run"]


def test_watch_without_an_id_streams_every_workflow(world: World, client: Client) -> None:
    run_workflow_to_end(world.root, "wf-all-1", 1, env=world.env)
    done = records(world.trace("wf-all-1"))[-1]
    wait_for(lambda: latest(client, "wf-all-1") == done, what="indexed")
    expected = {
        (item["workflow_id"], item["root"]): item["record"]
        for item in client.call("ps")["workflows"]
        if item["record"] is not None
    }
    watch(client)
    snapshot = [client.trace() for _ in expected]
    assert {(s["workflow_id"], s["root"]): s["record"] for s in snapshot} == expected
    run_workflow_to_end(world.root, "wf-all-2", 2, env=world.env)
    received = client.traces_until("wf-all-2")
    assert {item["workflow_id"] for item in received} == {"wf-all-2"}
    in_order([item["record"] for item in received], world.trace("wf-all-2"))


def test_unwatch_stops_the_notifications(world: World, client: Client) -> None:
    sub = watch(client, workflow_id="wf-unwatch")
    assert client.call("unwatch", subscription=sub) == {"unwatched": True}
    assert client.error("unwatch", {"subscription": sub})["code"] == -32002
    other = watch(client, workflow_id="wf-unwatch-2")
    run_workflow_to_end(world.root, "wf-unwatch", 1, env=world.env)
    run_workflow_to_end(world.root, "wf-unwatch-2", 1, env=world.env)
    received = client.traces_until("wf-unwatch-2")
    assert {item["subscription"] for item in received} == {other}


def test_a_workflow_run_from_another_directory_is_found_without_configuration(
    world: World, client: Client, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # the default trace directory: .doeff-flow in the project; registered by the writer
    run_workflow_to_end(Path(".doeff-flow"), "wf-elsewhere", 1, env=world.env, cwd=project)
    done = time.monotonic()
    last = records(project / ".doeff-flow" / "wf-elsewhere" / "trace.jsonl")[-1]

    def found() -> Any:
        # read to the end: the root may have been found while the workflow still ran
        reply = client.request("get", {"workflow_id": "wf-elsewhere"})
        summary = reply.get("result")
        return summary if summary and summary["record"] == last else None

    summary = wait_for(found, timeout=10, what="wf-elsewhere")
    assert time.monotonic() - done < 2.0  # within 2 s of the workflow's end (generous)
    assert summary["root"] == os.path.realpath(project / ".doeff-flow")
    assert summary["status"] == "completed"
    roots = {root["path"]: root["origin"] for root in client.call("roots.list")["roots"]}
    assert roots[summary["root"]] == "registry"


def put(path: Path, data: bytes, mode: str = "ab") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as handle:
        handle.write(data)


def latest(client: Client, workflow_id: str, **params: Any) -> Any:
    """The latest record flowd has for a workflow (None while it does not know it)."""
    reply = client.request("get", {"workflow_id": workflow_id, **params})
    return reply["result"]["record"] if "result" in reply else None


def test_a_truncated_trace_is_read_again_from_its_start(world: World, client: Client) -> None:
    trace = world.trace("wf-trunc")
    lines = world.template
    put(trace, b"\n".join(lines[:8]) + b"\n")
    wait_for(lambda: latest(client, "wf-trunc") == records(trace)[-1], what="indexed")
    watch(client, workflow_id="wf-trunc")
    assert client.trace()["record"]["step"] == 8
    put(trace, b"", mode="wb")  # truncated
    put(trace, lines[0] + b"\n" + lines[1] + b"\n")
    got = [client.trace()["record"], client.trace()["record"]]
    assert steps_of(got) == [1, 2]
    assert latest(client, "wf-trunc")["step"] == 2


def test_a_trace_rewritten_in_place_past_the_old_end_is_read_again(
    world: World, client: Client
) -> None:
    trace = world.trace("wf-rewrite")
    lines = world.template
    put(trace, lines[0] + b"\n")
    wait_for(lambda: latest(client, "wf-rewrite") == records(trace)[-1], what="indexed")
    watch(client, workflow_id="wf-rewrite")
    assert client.trace()["record"]["step"] == 1
    # the same inode, truncated and written longer than before, before flowd looks
    put(trace, b"\n".join(lines[2:6]) + b"\n", mode="r+b")
    received = [client.trace()["record"] for _ in range(4)]
    assert steps_of(received) == [3, 4, 5, 6]


def test_a_rotated_trace_is_followed_by_path(world: World, client: Client) -> None:
    trace = world.trace("wf-rotate")
    lines = world.template
    put(trace, b"\n".join(lines[:5]) + b"\n")
    wait_for(lambda: latest(client, "wf-rotate") == records(trace)[-1], what="indexed")
    watch(client, workflow_id="wf-rotate")
    assert client.trace()["record"]["step"] == 5
    trace.rename(trace.with_name("trace.jsonl.1"))
    put(trace.with_name("new"), b"\n".join(lines[:3]) + b"\n")
    trace.with_name("new").rename(trace)
    assert steps_of([client.trace()["record"] for _ in range(3)]) == [1, 2, 3]
    put(trace, lines[3] + b"\n")
    assert client.trace()["record"]["step"] == 4


def test_a_trace_replaced_by_a_big_one_is_sent_from_its_first_record(
    world: World, client: Client
) -> None:
    trace = world.trace("wf-big")
    put(trace, world.template[0] + b"\n")
    wait_for(lambda: latest(client, "wf-big") == records(trace)[-1], what="indexed")
    watch(client, workflow_id="wf-big")
    assert client.trace()["record"]["step"] == 1
    big = b"".join(world.template[i % len(world.template)] + b"\n" for i in range(800))
    assert len(big) > 256 * 1024  # more than flowd sends in one go
    put(trace.with_name("new"), big)
    trace.with_name("new").rename(trace)
    received = [client.trace()["record"] for _ in range(800)]
    assert received == records(trace)


def test_a_deleted_trace_and_a_deleted_workflow(world: World, client: Client) -> None:
    run_workflow_to_end(world.root, "wf-delete", 1, env=world.env)
    trace = world.trace("wf-delete")
    # read first: seen before its trace was written, it would have no trace already
    wait_for(lambda: latest(client, "wf-delete") == records(trace)[-1], what="indexed")
    trace.unlink()

    def problem() -> Any:
        summary = client.call("get", workflow_id="wf-delete")
        return summary if summary["problem"] else None

    summary = wait_for(problem, what="the trace gone")
    assert summary["record"] is None
    assert summary["status"] is None
    assert summary["problem"] == "no trace.jsonl"
    shutil.rmtree(trace.parent)
    wait_for(
        lambda: client.request("get", {"workflow_id": "wf-delete"}).get("error"),
        what="the workflow gone",
    )
    assert client.error("get", {"workflow_id": "wf-delete"})["code"] == -32001
    assert "wf-delete" not in [item["workflow_id"] for item in client.call("ps")["workflows"]]
    # and it may come back
    run_workflow_to_end(world.root, "wf-delete", 1, env=world.env)
    wait_for(
        lambda: (
            (client.request("get", {"workflow_id": "wf-delete"}).get("result") or {}).get("status")
            == "completed"
        ),
        what="the workflow back",
    )


def test_a_torn_last_line_waits_for_its_end(world: World, client: Client) -> None:
    trace = world.trace("wf-torn")
    lines = world.template
    put(trace, lines[0] + b"\n" + lines[1][:40])
    wait_for(lambda: latest(client, "wf-torn") == records(trace)[-1], what="indexed")
    watch(client, workflow_id="wf-torn")
    assert client.trace()["record"]["step"] == 1
    put(trace, lines[1][40:] + b"\n")
    assert client.trace()["record"]["step"] == 2
    assert client.call("history", workflow_id="wf-torn")["records"] == records(trace)


def test_malformed_lines_are_skipped_and_reported_when_nothing_else_is_left(
    world: World, client: Client
) -> None:
    lines = world.lines_of("wf-mixed")
    good = world.trace("wf-mixed")
    put(good, lines[0] + b"\n{not json\n\xff\xfe\n" + lines[1] + b'\n{"step": NaN}\n')
    bad = world.trace("wf-garbage")
    put(bad, b"garbage\n[1, 2]\n")
    empty = world.trace("wf-empty")
    put(empty, b"")

    def problem(workflow_id: str) -> Any:
        reply = client.request("get", {"workflow_id": workflow_id})
        return reply["result"]["problem"] if "result" in reply else None

    # each read once written: seen earlier, a directory has no trace.jsonl, a file is empty
    wait_for(lambda: problem("wf-garbage") == "no valid records", what="wf-garbage")
    wait_for(lambda: problem("wf-empty") == "empty trace", what="wf-empty")
    wait_for(lambda: latest(client, "wf-mixed") == json.loads(lines[1]), what="wf-mixed")
    history = client.call("history", workflow_id="wf-mixed")["records"]
    assert steps_of(history) == [1, 2]
    assert client.call("get", workflow_id="wf-mixed")["problem"] is None
    assert client.call("get", workflow_id="wf-garbage")["problem"] == "no valid records"
    assert client.call("get", workflow_id="wf-empty")["problem"] == "empty trace"
    assert client.call("ping")


def test_an_over_long_line_in_a_trace_is_skipped(world: World, client: Client) -> None:
    trace = world.trace("wf-long")
    lines = world.template
    put(trace, lines[0] + b"\n")
    wait_for(lambda: latest(client, "wf-long") == records(trace)[-1], what="indexed")
    put(trace, b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}\n' + lines[1] + b"\n")
    wait_for(lambda: latest(client, "wf-long")["step"] == 2, what="the line after it")
    assert steps_of(client.call("history", workflow_id="wf-long")["records"]) == [1, 2]


def test_the_same_id_under_two_roots(world: World, client: Client) -> None:
    first = Path(os.path.realpath(world.base / "first"))
    second = Path(os.path.realpath(world.base / "second"))
    run_workflow_to_end(first, "wf-twice", 1, env=world.env)
    run_workflow_to_end(second, "wf-twice", 2, env=world.env)

    last = {str(root): records(world.trace("wf-twice", root))[-1] for root in (first, second)}

    def both() -> Any:
        # read to the end under both roots, so "most recent" is decided by the last records
        found = [i for i in client.call("ps")["workflows"] if i["workflow_id"] == "wf-twice"]
        done = len(found) == 2 and all(i["record"] == last[i["root"]] for i in found)
        return found if done else None

    found = wait_for(both, what="both roots read to the end")
    assert [item["root"] for item in found] == sorted([str(first), str(second)])
    assert client.call("get", workflow_id="wf-twice")["root"] == str(second)  # most recent
    assert client.call("get", workflow_id="wf-twice", root=str(first))["root"] == str(first)
    history = client.call("history", workflow_id="wf-twice", root=str(first), last=100)
    assert history["records"] == records(world.trace("wf-twice", first))
    assert client.call("ps", root=str(first))["workflows"] == [found[0]]


def test_a_root_that_appears_later_is_indexed(world: World) -> None:
    later = Path(os.path.realpath(world.base / "later"))
    state = world.base / "later-state"
    with flowd("--root", later, "--watcher", world.watcher, state=state) as daemon:
        roots = daemon.client().call("roots.list")["roots"]
        assert roots == [
            {
                "path": str(later),
                "origin": "argument",
                "workflows": 0,
                "exists": False,
                "watch": "poll",  # looked for until it appears
            }
        ]
        # written with yet another registry: only the --root can lead flowd there
        run_workflow_to_end(later, "wf-later", 1, env={"XDG_STATE_HOME": str(world.base / "x")})
        with daemon.client() as client:
            summary = wait_for(
                lambda: client.request("get", {"workflow_id": "wf-later"}).get("result"),
                what="wf-later",
            )
            assert summary["root"] == str(later)
            shutil.rmtree(later)
            wait_for(
                lambda: client.call("roots.list")["roots"][0]["workflows"] == 0,
                what="the root gone",
            )
            assert client.call("ps")["workflows"] == []


def test_a_burst_reaches_a_client_that_reads_and_one_that_stops_reading_is_cut_off(
    world: World, client: Client
) -> None:
    trace = world.trace("wf-flood")
    put(trace, world.template[0] + b"\n")
    wait_for(lambda: latest(client, "wf-flood") == records(trace)[-1], what="indexed")
    slow = world.daemon.client()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    watch(slow, workflow_id="wf-flood")
    watch(client, workflow_id="wf-flood")
    # one write of 3,000 records: more than fit a client's queue at once
    put(trace, b"".join(world.template[1] + b"\n" for _ in range(3000)))
    received = [client.trace()["record"] for _ in range(3001)]
    assert received == records(trace)  # every one, in order, to the client that reads
    wait_for(lambda: "stopped reading (nothing sent to it for 1 s); cut off" in world.daemon.log())
    count = 0
    with contextlib.suppress(ConnectionResetError):
        while slow.read_line() is not None:
            count += 1
    slow.close()
    assert count < 3001  # closed before the end
    assert client.call("ping")
