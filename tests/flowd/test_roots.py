"""Roots: ``roots.add`` refuses system directories and other users' directories;
``roots.remove`` drops a root, its workflows, and what would bring it back at the next
start; at start flowd forgets registered directories that are gone and added roots that
may not be roots. A real flowd over a real socket, its state directory on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from doeff_flow_core.protocol import NOT_A_DIRECTORY, ROOT_REFUSED, UNKNOWN_ROOT
from tests.support.flowd import flowd
from tests.support.procs import wait_until
from tests.support.rpc import Client
from tests.support.workflows import run_workflow_to_end


def roots_of(client: Client) -> dict[str, dict[str, object]]:
    return {root["path"]: root for root in client.call("roots.list")["roots"]}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    "path", ["/", "/proc", "/proc/self", "/proc/1/task", "/sys", "/sys/kernel", "/dev", "/dev/shm"]
)
def test_system_directories_are_refused(tmp_path: Path, path: str) -> None:
    state = tmp_path / "state"
    with flowd(state=state) as daemon, daemon.client() as client:
        error = client.error("roots.add", {"path": path})
        assert error["code"] == ROOT_REFUSED == -32006
        shown = error["data"]["path"]  # links resolved (/proc/self: flowd's own pid)
        assert shown == os.path.realpath(path) or shown.startswith("/proc/")
        assert "system" in error["message"] or "root of the file system" in error["message"]
        assert error["data"]["reason"] in error["message"]
        assert client.call("roots.list") == {"roots": []}
        assert client.call("ping")["workflows"] == 0
    assert lines(state / "doeff-flow" / "flowd-roots") == []


def test_a_link_to_a_system_directory_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/proc")
    with flowd(state=tmp_path / "state") as daemon, daemon.client() as client:
        error = client.error("roots.add", {"path": str(link)})
        assert (error["code"], error["data"]["path"]) == (ROOT_REFUSED, "/proc")


def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        owner = 65534
    else:
        theirs = Path("/usr")  # root's, and not this user's
        owner = 0
    with flowd(state=tmp_path / "state") as daemon, daemon.client() as client:
        error = client.error("roots.add", {"path": str(theirs)})
        assert error["code"] == ROOT_REFUSED
        assert f"owned by uid {owner}, not by this user (uid {os.geteuid()})" in error["message"]
        assert client.error("roots.add", {"path": "/no/such/dir"})["code"] == NOT_A_DIRECTORY
        mine = tmp_path / "mine"
        mine.mkdir()
        assert client.call("roots.add", path=str(mine)) == {
            "path": str(mine),
            "added": True,
            "workflows": 0,
        }


def test_remove_drops_roots_their_workflows_and_what_would_bring_them_back(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    elsewhere = {"XDG_STATE_HOME": str(tmp_path / "elsewhere")}  # a registry flowd never reads
    argument, added, registered = (tmp_path / name for name in ("argument", "added", "registered"))
    run_workflow_to_end(argument, "wf-arg", 1, env=elsewhere)
    run_workflow_to_end(added, "wf-added", 1, env=elsewhere)
    run_workflow_to_end(registered, "wf-reg", 1, env={"XDG_STATE_HOME": str(state)})
    trace_dirs = state / "doeff-flow" / "trace-dirs"
    flowd_roots = state / "doeff-flow" / "flowd-roots"
    assert lines(trace_dirs) == [str(registered)]
    with flowd("--root", argument, state=state) as daemon, daemon.client() as client:
        assert client.call("roots.add", path=str(added))["workflows"] == 1
        assert lines(flowd_roots) == [str(added)]
        assert client.call("ping")["workflows"] == 3
        sub = client.call("watch", workflow_id="wf-added")["subscription"]
        assert client.trace()["workflow_id"] == "wf-added"
        removed = client.call("roots.remove", path=str(added))
        assert removed == {
            "path": str(added),
            "removed": True,
            "origin": "rpc",
            "workflows": 1,
            "lists": ["flowd-roots"],
        }
        assert client.call("roots.remove", path=str(registered)) == {
            "path": str(registered),
            "removed": True,
            "origin": "registry",
            "workflows": 1,
            "lists": ["trace-dirs"],
        }
        gone = client.call("roots.remove", path=str(argument) + "/")
        assert (gone["origin"], gone["workflows"], gone["lists"]) == ("argument", 1, [])
        assert client.call("roots.list") == {"roots": []}
        assert client.call("ps") == {"workflows": []}
        assert client.error("get", {"workflow_id": "wf-added"})["code"] == -32001
        # a run in a removed root is not seen, nor sent to its watcher
        run_workflow_to_end(added, "wf-added", 1, env=elsewhere)
        assert client.call("ping")["workflows"] == 0
        assert client.notifications == []
        client.call("unwatch", subscription=sub)
        error = client.error("roots.remove", {"path": str(added)})
        assert (error["code"], error["data"]) == (UNKNOWN_ROOT, {"path": str(added)})
        assert client.error("roots.remove", {"path": "relative"})["code"] == -32602
        assert daemon.tracebacks() == 0
    assert lines(flowd_roots) == []
    assert lines(trace_dirs) == []
    with flowd(state=state) as daemon, daemon.client() as client:  # a restart brings none back
        assert client.call("roots.list") == {"roots": []}


def test_at_start_gone_registered_directories_and_refused_added_roots_are_forgotten(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    kept = tmp_path / "kept"
    run_workflow_to_end(kept, "wf-kept", 1, env={"XDG_STATE_HOME": str(state)})
    trace_dirs = state / "doeff-flow" / "trace-dirs"
    flowd_roots = state / "doeff-flow" / "flowd-roots"
    gone = [str(tmp_path / f"gone-{n}") for n in range(38)]
    trace_dirs.write_text("".join(f"{path}\n" for path in [*gone[:20], str(kept), *gone[20:]]))
    added = tmp_path / "added"
    added.mkdir()
    flowd_roots.write_text(f"/proc\n{added}\n/sys/fs\n")  # as an older flowd accepted them
    with flowd(state=state) as daemon, daemon.client() as client:
        roots = roots_of(client)
        assert sorted(roots) == sorted([str(kept), str(added)])
        assert roots[str(kept)]["workflows"] == 1 and roots[str(kept)]["exists"] is True
        log = daemon.log()
        assert "missing; watching for it" not in log
        assert "registry: forgot 38 directories that no longer exist" in log
        assert "root /proc (rpc): under /proc" in log
    assert lines(trace_dirs) == [str(kept)]
    assert lines(flowd_roots) == [str(added)]


def test_a_registered_directory_removed_while_flowd_runs_is_listed_as_missing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    registered = tmp_path / "registered"
    run_workflow_to_end(registered, "wf-reg", 1, env={"XDG_STATE_HOME": str(state)})
    with flowd(state=state) as daemon, daemon.client() as client:
        assert str(registered) in roots_of(client)
        shutil.rmtree(registered)
        assert wait_until(lambda: roots_of(client)[str(registered)]["exists"] is False, 10)
        # forgotten by whoever lists the registry next (flowctl roots), or the next start
