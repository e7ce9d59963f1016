"""flowd's pure parts, in-process: framing, request parsing, encoding with records
spliced in, the raw trace readers, the outbox limits, the schedule, and the RPC
interface with no socket (including the internal-error answer a bug gets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doeff_flow_core import protocol
from flowd import errors
from flowd.daemon import Daemon
from flowd.index import history, read_range, resume_position
from flowd.jsonrpc import (
    LineSplitter,
    RawJson,
    encode,
    error_message,
    parse_request,
    trace_body,
    trace_prefix,
)
from flowd.outbox import LOW_MESSAGES, Outbox
from flowd.rpc import RpcInterface
from flowd.server import ClientConnection
from flowd.stored import resume_from
from flowd.subscriptions import Subscription
from flowd.watching import (
    IN_CREATE,
    IN_ISDIR,
    POLL_ACTIVE_MAX,
    POLL_FIRST,
    POLL_IDLE_MAX,
    Schedule,
    next_poll,
    parse_events,
)
from tests.support.traces import raw_lines
from tests.support.workflows import run_workflow_to_end

# -- framing and requests -------------------------------------------------------------


@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_lines_come_out_whole_however_the_bytes_are_cut(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(limit=64)
    out: list[bytes] = []
    position = 0
    for cut in cuts * (len(stream) // sum(cuts) + 1):
        out += splitter.feed(stream[position : position + cut])
        position += cut
    assert out == lines
    assert not splitter.too_long


def test_a_line_over_the_limit_stops_the_splitter_after_the_lines_before_it() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"0123456789\nabc") == [b"0123456789"]
    assert not splitter.too_long
    assert splitter.feed(b"defghijk") == []  # 11 bytes and no newline yet
    assert splitter.too_long
    assert splitter.feed(b"\nmore\n") == []
    complete = LineSplitter(limit=10)
    assert complete.feed(b"ok\n" + b"x" * 11 + b"\nafter\n") == [b"ok"]
    assert complete.too_long


def test_parse_request() -> None:
    request = parse_request(b'{"jsonrpc": "2.0", "id": 3, "method": "ps", "params": {"a": 1}}')
    assert (request.method, request.params, request.id, request.notification) == (
        "ps",
        {"a": 1},
        3,
        False,
    )
    note = parse_request(b'{"jsonrpc": "2.0", "method": "ping"}')
    assert note.notification and note.params == {}
    assert not parse_request(b'{"jsonrpc": "2.0", "method": "ping", "id": null}').notification
    with pytest.raises(errors.ParseError):
        parse_request(b'{"a": Infinity}')
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_request(b'{"jsonrpc": "2.0", "id": "x", "method": 1}')
    assert caught.value.request_id == "x"
    # A number too big for a float is infinity, which no answer could echo back.
    for huge in (b"1e999999", b"-1e999999"):
        with pytest.raises(errors.InvalidRequest) as caught:
            parse_request(b'{"jsonrpc": "2.0", "id": ' + huge + b', "method": "ping"}')
        assert caught.value.request_id is None
        error_message(caught.value.request_id, caught.value)  # encodable


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(st.tuples(st.text(max_size=8), json_values), max_size=6), st.text(max_size=20))
@settings(max_examples=200)
def test_raw_records_are_spliced_in_unchanged(pairs: list[tuple[str, Any]], ident: str) -> None:
    raws = {key: json.dumps(value, ensure_ascii=False).encode() for key, value in pairs}
    message = {"id": ident, "values": [RawJson(raw) for raw in raws.values()], "keys": list(raws)}
    data = encode(message)
    assert data.endswith(b"\n") and data.count(b"\n") == data.count(b"\n", 0, len(data) - 1) + 1
    decoded = json.loads(data)
    assert decoded["id"] == ident
    assert decoded["values"] == [json.loads(raw) for raw in raws.values()]
    for raw in raws.values():
        assert raw in data


def test_a_request_id_cannot_pose_as_a_record() -> None:
    data = encode({"id": "\x00\x00:0\x00", "record": RawJson(b'{"a":1}')})
    assert json.loads(data) == {"id": "\x00\x00:0\x00", "record": {"a": 1}}


def test_trace_notification_shape() -> None:
    line = trace_prefix("s1") + trace_body("wf-1", "/r\u00e9", b'{"step":1}')
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "method": "trace",
        "params": {
            "subscription": "s1",
            "workflow_id": "wf-1",
            "root": "/r\u00e9",
            "record": {"step": 1},
        },
    }
    assert line.endswith(b"\n") and line.count(b"\n") == 1


# -- raw trace readers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    base = tmp_path_factory.mktemp("lines")
    run_workflow_to_end(base, "wf-lines", 6, env={"XDG_STATE_HOME": str(base / "state")})
    return raw_lines(base / "wf-lines" / "trace.jsonl")


pieces = st.lists(st.sampled_from(["good", "garbage", "blank", "long"]), min_size=0, max_size=25)


@given(plan=pieces, torn=st.booleans(), n=st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_read_tail_matches_reading_everything(
    real_lines: list[bytes],
    tmp_path_factory: pytest.TempPathFactory,
    plan: list[str],
    torn: bool,
    n: int,
) -> None:
    root = tmp_path_factory.mktemp("tail")
    (root / "wf").mkdir()
    path = root / "wf" / "trace.jsonl"
    data = b""
    good: list[bytes] = []
    for number, kind in enumerate(plan):
        if kind == "good":
            line = real_lines[number % len(real_lines)]
            good.append(line)
        elif kind == "garbage":
            line = b"{not json"
        elif kind == "long":
            line = b'{"x": "' + b"y" * (1024 * 1024 + 5) + b'"}'
        else:
            line = b"   "
        data += line + b"\n"
    complete = len(data)
    if torn:
        data += real_lines[0][:30]
    path.write_bytes(data)
    tail = history(str(root), "wf", n, None)
    assert [line.raw for line in tail.items] == good[-n:]
    assert tail.end == complete
    assert tail.torn == torn
    assert tail.ident is not None
    found = read_range(str(root), "wf", (tail.ident, 0), (tail.ident, len(data)), 1 << 30)
    assert found is not None
    forward, end = found
    assert [line.raw for line in forward] == good
    assert end == (tail.ident, complete)
    assert [line.end for line in forward[-n:]] == [line.end for line in tail.items]


def test_resume_position_and_resume_from_agree(real_lines: list[bytes], tmp_path: Path) -> None:
    (tmp_path / "wf").mkdir()
    path = tmp_path / "wf" / "trace.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in real_lines + real_lines))
    status = path.stat()
    ident, size = (status.st_dev, status.st_ino), status.st_size
    found = read_range(str(tmp_path), "wf", (ident, 0), (ident, size), 1 << 30)
    assert found is not None
    lines = found[0]
    run = lines[0].run
    for step in (0, 3, len(real_lines) - 1, 10**6):
        position = resume_position(str(tmp_path), "wf", run, step, (ident, size))
        expected = resume_from(lines, run, step)
        assert position == (ident, expected[0].start if expected else size)
    assert resume_position(str(tmp_path), "wf", "other-run", 3, (ident, size)) == (ident, 0)
    assert resume_from(lines, "other-run", 3) == lines


def test_read_range_notices_a_replaced_or_shrunk_file(
    real_lines: list[bytes], tmp_path: Path
) -> None:
    (tmp_path / "wf").mkdir()
    path = tmp_path / "wf" / "trace.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in real_lines))
    stat = path.stat()
    ident, size = (stat.st_dev, stat.st_ino), stat.st_size
    root = str(tmp_path)
    found = read_range(root, "wf", (ident, 0), (ident, size), 1 << 20)
    assert found is not None and [line.raw for line in found[0]] == real_lines
    assert read_range(root, "wf", (ident, size + 10), (ident, size + 20), 1 << 20) is None
    other = (ident[0], ident[1] + 1)  # a file that is not in the chain (any more)
    assert read_range(root, "wf", (other, 0), (other, size), 1 << 20) is None


# -- outbox, schedule, inotify events ---------------------------------------------------


def test_live_notifications_fit_the_outbox_or_are_left_for_later() -> None:
    async def main() -> None:
        box = Outbox(live_messages=5, live_bytes=100)
        assert box.fits(5, 50)
        assert not box.fits(6, 50)
        assert not box.fits(1, 101)
        for _ in range(4):
            box.push(b"x" * 10)
        assert box.fits(1, 60) and not box.fits(2, 10) and not box.fits(1, 61)
        assert await box.take() == b"x" * 40
        assert box.fits(5, 100)

    anyio.run(main)


def test_catch_up_waits_for_the_client_instead_of_cutting_it_off() -> None:
    async def main() -> None:
        box = Outbox(live_messages=10, live_bytes=10**6, low_messages=2, low_bytes=10**6)
        for _ in range(20):
            box.put(b"m")  # past the live room: put is for what waited its turn
        assert not box.overflowed
        waited = False

        async def waiter() -> None:
            nonlocal waited
            assert await box.wait_space()
            waited = True

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.sleep(0.01)
            assert not waited
            assert await box.take() == b"m" * 20  # the writer drains it
        assert waited
        box.put(b"last")
        box.close()
        assert await box.take() == b"last"
        assert await box.take() is None

    anyio.run(main)


def test_a_client_that_takes_nothing_for_the_stall_time_is_cut_off() -> None:
    async def main() -> None:
        cut: list[bool] = []
        box = Outbox(low_messages=1, stall=0.05, on_overflow=lambda: cut.append(True))
        box.put(b"a")
        box.put(b"b")
        assert not await box.wait_space()  # nothing taken for 0.05 s
        assert cut == [True] and box.overflowed and box.queued == 0
        assert await box.take() is None
        assert not await box.wait_space()
        patient = Outbox(low_messages=1, stall=0.05)
        patient.put(b"a")
        patient.put(b"b")

        async def drain_slowly() -> None:
            await anyio.sleep(0.03)  # within the stall period
            assert await patient.take() == b"ab"

        async with anyio.create_task_group() as group:
            group.start_soon(drain_slowly)
            assert await patient.wait_space()
        assert not patient.overflowed

    anyio.run(main)


def test_a_watch_waiting_for_room_misses_none_of_the_records_written_meanwhile(
    real_lines: list[bytes], tmp_path: Path
) -> None:
    root = Path(os.path.realpath(tmp_path))
    trace = root / "wf-1" / "trace.jsonl"
    trace.parent.mkdir()
    trace.write_bytes(real_lines[0] + b"\n")
    daemon = Daemon([str(root)], watcher="poll")

    async def main() -> list[dict[str, Any]]:
        await daemon.load()
        async with anyio.create_task_group() as group:
            group.start_soon(daemon.run)
            client = ClientConnection("client", group, stall=60)
            for _ in range(LOW_MESSAGES + 1):  # a client behind: its queue is past low water
                client.outbox.put(b"{}\n")
            watch = b'{"jsonrpc":"2.0","id":1,"method":"watch","params":{"workflow_id":"wf-1"}}'
            await RpcInterface(daemon).handle_line(client, watch)
            with trace.open("ab") as handle:  # written after the watch began
                handle.write(real_lines[1] + b"\n" + real_lines[2] + b"\n")
            with anyio.fail_after(20):
                while daemon.index.resolve("wf-1").latest.raw != real_lines[2]:  # type: ignore[union-attr]
                    await anyio.sleep(0.01)
                received: list[dict[str, Any]] = []
                last = json.loads(real_lines[2])
                while not received or received[-1]["record"] != last:
                    data = await client.outbox.take()
                    assert data is not None
                    messages = [json.loads(line) for line in data.splitlines()]
                    received += [m["params"] for m in messages if m.get("method") == "trace"]
            group.cancel_scope.cancel()
        return received

    received = anyio.run(main)
    daemon.close()
    # the record that was the latest when the watch began, then every one after it
    assert [item["record"] for item in received] == [json.loads(line) for line in real_lines[:3]]


def test_schedule_and_backoff() -> None:
    class Item:
        def __init__(self) -> None:
            self.due = 0.0
            self.interval = 0.0

    schedule = Schedule()
    a, b = Item(), Item()
    schedule.add(a, 0.0, 2.0)
    schedule.add(b, 0.0, 1.0)
    schedule.add(a, 0.0, 0.5)  # rescheduled: the old slot is stale
    assert schedule.next_due() == 0.5
    assert schedule.pop_due(1.0, 10) == [a, b]
    assert schedule.pop_due(10.0, 10) == []
    schedule.add(a, 0.0, 1.0)
    schedule.cancel(a)
    assert schedule.next_due() is None

    interval = next_poll(0.0, changed=True)
    assert interval == POLL_FIRST
    seen = [interval]
    for _ in range(100):
        interval = next_poll(interval, changed=False)
        seen.append(interval)
    assert seen == sorted(seen) and seen[-1] == POLL_IDLE_MAX
    assert POLL_ACTIVE_MAX in seen
    assert next_poll(POLL_IDLE_MAX, changed=True) == POLL_FIRST


def test_parse_inotify_events() -> None:
    import struct

    name = b"wf-1".ljust(16, b"\0")
    data = struct.pack("iIII", 7, IN_CREATE | IN_ISDIR, 0, len(name)) + name
    data += struct.pack("iIII", 8, 2, 0, 0)
    events = parse_events(data)
    assert [(e.wd, e.mask, e.name) for e in events] == [
        (7, IN_CREATE | IN_ISDIR, "wf-1"),
        (8, 2, ""),
    ]


# -- the RPC interface without a socket -------------------------------------------------


class FakeClient:
    name = "test client"

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.subscriptions: dict[str, Subscription] = {}

    def spawn(self, job: Any) -> None:
        raise AssertionError("no task expected")


def answers(daemon: Daemon, *lines: bytes) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        rpc = RpcInterface(daemon)
        client = FakeClient()
        for line in lines:
            await rpc.handle_line(client, line)
        client.outbox.close()
        out = b""
        while (data := await client.outbox.take()) is not None:
            out += data
        return [json.loads(line) for line in out.splitlines()]

    return anyio.run(main)


def test_the_rpc_interface_answers_without_a_socket(
    real_lines: list[bytes], tmp_path: Path
) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "wf-1").mkdir()
    (root / "wf-1" / "trace.jsonl").write_bytes(b"\n".join(real_lines) + b"\n")
    daemon = Daemon([str(root)], watcher="poll")
    anyio.run(daemon.load)
    ping, ps, missing = answers(
        daemon,
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":2,"method":"ps","params":{"status":"completed"}}',
        b'{"jsonrpc":"2.0","id":3,"method":"get","params":{"workflow_id":"wf-2"}}',
    )
    assert ping["result"]["workflows"] == 1
    assert [item["record"] for item in ps["result"]["workflows"]] == [json.loads(real_lines[-1])]
    assert missing["error"]["code"] == -32001


def test_a_bug_gets_an_internal_error_and_the_next_request_is_answered(tmp_path: Path) -> None:
    daemon = Daemon([], watcher="poll")

    def broken() -> Any:
        raise RuntimeError("index on fire")

    daemon.index.entries = broken  # type: ignore[method-assign]
    failed, ping = answers(
        daemon,
        b'{"jsonrpc":"2.0","id":1,"method":"ps"}',
        b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
    )
    assert failed["id"] == 1
    assert failed["error"]["code"] == protocol.INTERNAL_ERROR == -32603
    assert failed["error"]["message"] == "internal error: RuntimeError: index on fire"
    assert ping["result"]["workflows"] == 0
