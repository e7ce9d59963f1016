"""``watch`` is bounded: at most MAX_WATCHES subscriptions per connection and
MAX_WATCHES_TOTAL in flowd; past either, ``-32005`` before anything is made, and the
connection, and everyone else, is served on. What a flood of watches took is given back
once its connections leave (VmRSS of a real flowd, over a real socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from doeff_flow_core.protocol import MAX_WATCHES, MAX_WATCHES_TOTAL, TOO_MANY_WATCHES
from tests.support.flood import flood, warm_up
from tests.support.flowd import Flowd, socket_dir
from tests.support.procs import wait_until
from tests.support.rpc import Client


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Flowd]:
    root = socket_dir("cap")  # an empty root: every id watched is unknown
    running = Flowd("--root", root, state=tmp_path / "state")
    try:
        yield running
    finally:
        running.cleanup()
        root.rmdir()


def test_watches_past_the_cap_are_refused_and_the_connection_goes_on(daemon: Flowd) -> None:
    over = flood(daemon.socket, MAX_WATCHES + 5, "nobody")
    try:
        assert over.accepted == MAX_WATCHES
        assert over.refused == {"connection": 5}
        assert over.other == []
        with Client(daemon.socket) as other:  # another connection may still watch
            assert "subscription" in other.call("watch", workflow_id="wf-other")
    finally:
        over.leave()
    with Client(daemon.socket) as client:
        first = client.call("watch", workflow_id="wf-x")["subscription"]
        for _ in range(MAX_WATCHES - 1):
            client.call("watch", workflow_id="wf-x")
        error = client.error("watch", {"workflow_id": "wf-x"})
        assert error["code"] == TOO_MANY_WATCHES == -32005
        assert error["data"] == {"limit": MAX_WATCHES, "scope": "connection"}
        assert "at most 1000" in error["message"]
        assert client.call("ping")["pid"] == daemon.pid  # the connection is served on
        client.call("unwatch", subscription=first)
        assert "subscription" in client.call("watch", workflow_id="wf-x")  # room again
    # one line for the lot (at most one per 10 s), not one per request
    assert daemon.log().count("refusing more") == 1
    assert "1000 watches open (connection's limit); refusing more (1 refused)" in daemon.log()


def test_a_flood_of_watches_is_refused_and_its_memory_given_back(daemon: Flowd) -> None:
    warm_up(daemon.socket, 14)  # the baseline: a flowd that served as many clients at once
    before = daemon.rss_kib()
    one = flood(daemon.socket, 50_000, "one")
    assert (one.accepted, one.refused) == (MAX_WATCHES, {"connection": 50_000 - MAX_WATCHES})
    many = [flood(daemon.socket, MAX_WATCHES + 1, f"many{n}") for n in range(12)]
    accepted = one.accepted + sum(f.accepted for f in many)
    assert accepted == MAX_WATCHES_TOTAL  # the last ones met flowd's limit
    assert sum(f.refused.get("flowd", 0) for f in many) > 0
    with Client(daemon.socket) as client:  # everyone else is served meanwhile
        assert client.call("ping")["pid"] == daemon.pid
        assert client.error("watch", {"workflow_id": "late"})["data"]["scope"] == "flowd"
    peak = daemon.rss_kib()
    for each in (one, *many):
        each.leave()
    limit = before * 1.10
    # within a client's stall timeout (10 s), whose timers hold a little of it till then
    assert wait_until(lambda: daemon.rss_kib() <= limit, 15, 0.2), (
        f"VmRSS {before} KiB before, {peak} at the peak, {daemon.rss_kib()} after leaving"
    )
    with Client(daemon.socket) as client:  # every slot is free again
        for _ in range(MAX_WATCHES):
            client.call("watch", workflow_id="again")
    assert daemon.tracebacks() == 0
