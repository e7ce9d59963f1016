"""What flowd exports: what ends while it runs. A run found mid-way, a killed workflow's
open calls, and what SIGTERM sends; a real flowd, a real collector, real workflows."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

from doeff_flow_core.timeline.otlp import trace_id
from doeff_flow_core.timeline.spans import INCOMPLETE, OK
from tests.support.flowd import Flowd
from tests.support.otlp import (
    WAIT,
    Collector,
    attributes,
    exporting,
    held,
    hex_id,
    run,
    stats,
    trace_dir,
    trace_spans,
)
from tests.support.procs import python_command, python_env, wait_for

# -- what is exported: what ends while flowd runs -------------------------------------------


def test_a_run_found_mid_way_exports_only_what_ends_later_with_true_starts_and_ids(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    done = run(traces, "wf-done")
    with (
        held(traces, "wf-mid") as gate,
        exporting(tmp_path, collector.url) as daemon,
    ):
        gate.set()
        expected = wait_for(
            lambda: (spans := trace_spans(traces, "wf-mid"))[-1].status == OK and spans,
            WAIT,
            "wf-mid ended",
        )
        # ended before flowd started: prepare and its two leaves (of the root task)
        before = [
            s for s in expected if s.name == "prepare" or (s.name == "leaf" and s.task is None)
        ]
        later = [s for s in expected if s not in before]
        assert len(later) == len(expected) - 3
        wait_for(lambda: stats(daemon)["sent_spans"] >= len(later), WAIT, "the later spans")
        taken = collector.taken()
        assert set(taken) == {hex_id(span) for span in later}
        for span in later:  # the calls open when flowd started: their true start
            assert taken[hex_id(span)].start_time_unix_nano == round(span.start * 1e9)
        assert trace_id("wf-done", done[0].run) not in {s.trace_id.hex() for s in taken.values()}
        assert stats(daemon)["sent_spans"] == len(later)


KILLED_WORKFLOW = """
import asyncio, sys
from doeff import Await, Get, do, slog
from doeff_flow_core import run_workflow

@do
def wait_forever():
    yield slog("waiting")
    yield Await(asyncio.sleep(600))

@do
def main():
    yield Get("k")
    yield wait_forever()

run_workflow(main(), "wf-killed", sys.argv[1], store={"k": 1})
"""


def test_a_killed_workflow_s_open_calls_are_sent_incomplete(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    with exporting(tmp_path, collector.url) as daemon:
        worker = subprocess.Popen(python_command(KILLED_WORKFLOW, [traces]), env=python_env())
        trace = traces / "wf-killed" / "trace.jsonl"
        try:
            wait_for(lambda: trace.exists() and b"Await" in trace.read_bytes(), WAIT, "Await")
            wait_for(lambda: daemon_has(daemon, "wf-killed"), WAIT, "indexed")
        finally:
            worker.kill()
            worker.wait()
        wait_for(lambda: "wf-killed" in {s.name for s in collector.taken().values()}, WAIT, "sent")
        taken = {span.name: span for span in collector.taken().values()}
        assert set(taken) == {"wf-killed", "main", "wait_forever"}
        for span in taken.values():
            assert span.status.code == 0  # unset: it never ended
            assert attributes(span.attributes)["doeff.incomplete"] is True
        assert [e.name for e in taken["wait_forever"].events] == ["waiting", "Await(...)"]
        # The run says why it never ended: its writer is gone.
        assert attributes(taken["wf-killed"].attributes)["doeff.ending"] == "lost"
        assert "doeff.ending" not in attributes(taken["main"].attributes)
        # the collector keeps a request before it answers: flowd counts it after
        wait_for(lambda: stats(daemon)["queued"] == 0, WAIT, "the answer counted")
        assert stats(daemon)["sent_spans"] == 3


def daemon_has(daemon: Flowd, workflow_id: str) -> bool:
    with daemon.client() as client:
        rows = client.call("ps")["workflows"]
        return any(row["workflow_id"] == workflow_id for row in rows)


def test_sigterm_sends_what_is_queued_but_not_the_spans_still_open(
    tmp_path: Path, collector: Collector
) -> None:
    traces = trace_dir(tmp_path)
    # Three failures, then every request (the one flowd sends when it stops, or a retry
    # it sent before: the stop may come after the backoff) waits for the test, then is
    # taken: the batch is still queued when flowd stops, however late that is.
    collector.statuses = [503, 503, 503]
    collector.hold, collector.hold_after = threading.Event(), 3
    timeout = ("--otlp-timeout", WAIT)  # flowd waits as long as the test for the answer
    with exporting(tmp_path, collector.url, *timeout) as daemon, held(traces, "wf-open"):
        finished = run(traces, "wf-finished")
        ended_before = trace_spans(traces, "wf-open")
        queued = len(finished) + len([s for s in ended_before if s.status != INCOMPLETE])
        wait_for(lambda: stats(daemon)["queued"] == queued, WAIT, "every ended span queued")
        wait_for(lambda: stats(daemon)["failed_requests"] >= 3, WAIT, "three failures")
        daemon.proc.send_signal(signal.SIGTERM)
        # flowd removes its socket, then at once (nothing awaited between) the exporter
        # notes what is queued and stops waiting to retry: only then does the answer come
        wait_for(lambda: not daemon.socket.exists(), WAIT, "flowd stopping")
        collector.hold.set()
        assert daemon.proc.wait(WAIT) == 0  # (no second SIGTERM: that one would kill it)
        assert daemon.stop() == 0
    taken = collector.taken()
    names = {(s.trace_id.hex(), s.name) for s in taken.values()}
    assert {hex_id(span) for span in finished} <= set(taken)
    open_trace = trace_id("wf-open", ended_before[0].run)
    assert (open_trace, "prepare") in names  # ended before SIGTERM: sent
    assert (open_trace, "outer") not in names and (open_trace, "wf-open") not in names
    log = daemon.log()
    assert f"otlp: stopping: {queued} queued spans sent, 0 not sent" in log
    assert log.rstrip().endswith("flowd INFO stopped")
