"""flowd goes on whatever the exporter meets: records no process can have written, an
exporter loop that fails."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import pytest

from flowd import index as flowd_index
from flowd.otlp import exporter as flowd_exporter
from flowd.otlp.endpoint import Endpoint
from flowd.otlp.exporter import SWEEP_SECONDS, Exporter
from flowd.otlp.health import Health
from tests.support.flowd import Flowd
from tests.support.otlp import (
    WAIT,
    Collector,
    count,
    dead_pid,
    exporting,
    indexed,
    trace_dir,
    written_by,
)
from tests.support.procs import wait_for

# -- flowd goes on whatever the exporter meets ---------------------------------------------


def indexed_count(daemon: Flowd) -> int:
    """Workflows indexed (without deriving a status, as ``ps`` does)."""
    with daemon.client() as client:
        return sum(root["workflows"] for root in client.call("roots.list")["roots"])


HUGE_PID = 2**70  # no process can have it: os.kill raises OverflowError


def test_a_record_with_a_pid_no_process_can_have_leaves_flowd_serving(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    with exporting(tmp_path, collector.url) as daemon:
        lines = written_by(tmp_path / "elsewhere", "wf-huge-pid", HUGE_PID, 3)
        (traces / "wf-huge-pid").mkdir()  # appears while flowd runs: read from its start
        (traces / "wf-huge-pid" / "trace.jsonl").write_bytes(b"".join(lines))
        wait_for(lambda: indexed_count(daemon) == 1, WAIT, "indexed")
        time.sleep(3 * SWEEP_SECONDS)  # sweeps meet it
        assert daemon.proc.poll() is None
        with daemon.client() as client:
            assert client.call("ping")["otlp"]["state"] in ("idle", "ok")
    assert count(daemon, "Traceback") == 0
    assert count(daemon, "otlp: ending runs whose writer is gone") <= 1  # not once a sweep


def test_an_exporter_loop_that_fails_logs_once_and_goes_on(
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    traces = trace_dir(tmp_path)
    written_by(traces, "wf-bad", HUGE_PID, 3)
    written_by(traces, "wf-dead", dead_pid(), 3)
    alive = flowd_index.process_alive

    def old_core(pid: int, start: int | None) -> bool:  # as the core was: it raised
        if pid == HUGE_PID:
            raise OverflowError("signed integer is greater than maximum")
        return alive(pid, start)

    monkeypatch.setattr(flowd_index, "process_alive", old_core)
    monkeypatch.setattr(flowd_exporter, "SWEEP_SECONDS", 0.02)
    endpoint = Endpoint(collector.url + "/v1/traces")
    exporter = Exporter(endpoint, Health(endpoint.url))
    feed = exporter.feed
    assert feed is not None
    for workflow_id in ("wf-bad", "wf-dead"):  # the bad one first: the other is still swept
        feed.feed(indexed(traces, workflow_id)[2])
    assert len(feed) == 2

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(exporter.run)
            with anyio.fail_after(WAIT):  # sent, and the sweep failed again and again
                while not collector.taken() or count(caplog.text, "SweepFailed") < 5:
                    await anyio.sleep(0.02)
            await exporter.close(0.1)
            group.cancel_scope.cancel()

    with caplog.at_level(logging.DEBUG, logger="flowd"):
        anyio.run(main)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("otlp: ending runs whose writer is gone: SweepFailed: ")
    assert "wf-bad" in errors[0] and "OverflowError" in errors[0]
    names = {span.name for span in collector.taken().values()}
    assert "wf-dead" in names and "wf-bad" not in names  # wf-bad's run is still open
