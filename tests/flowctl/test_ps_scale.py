"""``ps`` over many workflows: the scan with worker processes lists exactly what the scan
in one process lists (order, records, problems), on every kind of awkward workflow, and
leaves no worker behind however it ends; the listing and its rendering stay the same."""

from __future__ import annotations

import gc
import io
import json
import multiprocessing
import multiprocessing.process
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doeff_flow_core.tracefiles import scan
from doeff_flow_core.tracefiles.chain import file_id
from doeff_flow_core.tracefiles.lines import FIRST_BLOCK
from doeff_flow_core.tracefiles.scan import WorkflowSummary, scan_workflows
from flowctl import commands, exitcodes
from flowctl.console import Console
from flowctl.options import GlobalOptions, Request
from flowctl.sources import files
from flowctl.sources.files import FileSource
from tests.support.procs import run_python
from tests.support.traces import put_trace, record_line

FUTURE = "2099-01-01T00:00:00.000+00:00"  # ``0s ago`` whenever the test runs


def lines(workflow_id: str, *steps: int, **fields: Any) -> str:
    return "".join(record_line(workflow_id, s, updated_at=FUTURE, **fields) for s in steps)


def awkward_root(root: Path, good: int = 30) -> Path:
    """A trace directory holding every kind of workflow a scan meets, and ``good`` plain
    ones between them."""
    for number in range(good):
        name = f"wf-{number:03d}"
        put_trace(root, name, lines(name, 1, 2, 3, last_slog={"msg": "at", "fields": {"n": "1"}}))
    put_trace(root, "wf-empty", "")
    (root / "wf-no-file").mkdir()
    put_trace(root, "wf-malformed", "not json\n{}\n[1]\n")
    put_trace(root, "wf-last-malformed", lines("wf-last-malformed", 1, 2) + "{oops\n")
    put_trace(root, "wf-last-invalid", lines("wf-last-invalid", 1) + record_line(step="x"))
    put_trace(root, "wf-torn", lines("wf-torn", 1, 2) + '{"workflow_id": "wf-to')
    put_trace(root, "wf-torn-only", '{"workflow_id": "wf-torn-o')
    put_trace(root, "wf-blank-last", lines("wf-blank-last", 1, 2) + "\n  \n\t\n")
    put_trace(root, "wf-long", lines("wf-long", *range(1, 200)))  # ends far past a block
    assert (root / "wf-long" / "trace.jsonl").stat().st_size > 4 * FIRST_BLOCK
    long_effect = "E" * (3 * FIRST_BLOCK)
    put_trace(root, "wf-long-line", lines("wf-long-line", 1, current_effect=long_effect))
    put_trace(
        root, "wf-naive-time", record_line("wf-naive-time", 4, updated_at="2099-01-01T00:00:00")
    )
    rotated = root / "wf-rotated-only"
    rotated.mkdir()
    (rotated / "trace.jsonl.1").write_text(lines("wf-rotated-only", 5, 6))
    after_rotation = put_trace(root, "wf-rotated-empty", "")
    after_rotation.with_name("trace.jsonl.1").write_text(lines("wf-rotated-empty", 7))
    (root / "wf-fifo").mkdir()
    os.mkfifo(root / "wf-fifo" / "trace.jsonl")
    (root / "wf-linked-file").mkdir()
    (root / "wf-linked-file" / "trace.jsonl").symlink_to(root / "wf-000" / "trace.jsonl")
    (root / "wf-linked-dir").symlink_to(root / "wf-001")  # no workflow directory
    (root / "wf-trace-is-dir" / "trace.jsonl").mkdir(parents=True)
    sparse = put_trace(root, "wf-sparse", "")
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 30)
        handle.seek(1 << 30)
        handle.write(b"\n" + lines("wf-sparse", 8).encode())
    (root / "not a workflow id").mkdir()
    (root / "wf-stray-file").write_text("x")
    return root


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened for reading) fails the test instead of hanging."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("a read blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers for any directory, a few names to a batch: every worker gets several."""
    monkeypatch.setattr(scan, "PARALLEL_MIN", 0)
    monkeypatch.setattr(scan, "BATCH", 4)


@pytest.fixture
def summarized_here(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The workflows this process reads itself (rather than parsing a worker's line)."""
    names: list[str] = []
    original = scan.summarize_in

    def counting(root: Any, workflow_id: str) -> WorkflowSummary:
        names.append(workflow_id)
        return original(root, workflow_id)

    monkeypatch.setattr(scan, "summarize_in", counting)
    return names


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_list_what_one_process_lists(
    tmp_path: Path, small_batches: None, summarized_here: list[str]
) -> None:
    root = awkward_root(tmp_path / "traces")
    alone = scan_workflows(root)
    summarized_here.clear()
    assert scan_workflows(root, processes=3) == alone
    # The plain workflows came from the workers; the awkward ones were read here.
    assert not any(name.startswith("wf-0") for name in summarized_here)
    assert {"wf-fifo", "wf-malformed", "wf-rotated-only", "wf-sparse"} <= set(summarized_here)
    found = {summary.workflow_id: summary for summary in alone}
    assert "wf-linked-dir" not in found and "wf-stray-file" not in found
    steps = {name: s.latest.step for name, s in found.items() if s.latest is not None}
    assert steps["wf-000"] == 3 and steps["wf-long"] == 199 and steps["wf-long-line"] == 1
    assert steps["wf-last-malformed"] == 2 and steps["wf-last-invalid"] == 1
    assert steps["wf-torn"] == 2 and steps["wf-blank-last"] == 2
    assert steps["wf-rotated-only"] == 6 and steps["wf-rotated-empty"] == 7
    assert steps["wf-sparse"] == 8 and steps["wf-naive-time"] == 4
    problems = {name: s.problem for name, s in found.items() if s.latest is None}
    assert set(problems) == {
        "wf-empty",
        "wf-no-file",
        "wf-malformed",
        "wf-torn-only",
        "wf-fifo",
        "wf-linked-file",
        "wf-trace-is-dir",
    }
    assert all(problems.values())


def test_a_directory_at_the_bound_is_read_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = awkward_root(tmp_path / "traces")
    count = len(scan_workflows(root))
    monkeypatch.setattr(scan, "PARALLEL_MIN", count)

    def no_processes(*args: object) -> None:
        raise AssertionError("a worker was started")

    monkeypatch.setattr(multiprocessing, "get_context", no_processes)
    assert len(scan_workflows(root, processes=4)) == count


@pytest.mark.parametrize("error", [OSError(11, "no more processes"), EOFError("unexpected EOF")])
@pytest.mark.parametrize("started", [0, 1])
def test_workers_that_cannot_start_change_nothing(
    tmp_path: Path,
    small_batches: None,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    started: int,
) -> None:
    """None of the workers start, or the first does and the second does not: what they
    would have read is read here."""
    root = awkward_root(tmp_path / "traces")
    alone = scan_workflows(root)
    start = multiprocessing.process.BaseProcess.start
    calls: list[object] = []

    def refused(process: multiprocessing.process.BaseProcess) -> None:
        calls.append(process)
        if len(calls) > started:
            raise error
        start(process)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refused)
    assert scan_workflows(root, processes=3) == alone
    assert len(calls) == started + 1  # no more were tried after one failed


def kill_workers(killed: list[int]) -> None:
    for child in multiprocessing.active_children():
        if child.pid is not None:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished meanwhile: nothing to kill
                continue
            killed.append(child.pid)


@pytest.mark.parametrize("when", ["started", "reading"])
def test_a_worker_killed_changes_nothing(
    tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Killed as soon as it starts (before its names are sent) or once lines come in
    (mid-way, or done by then): its workflows are read here instead."""
    root = awkward_root(tmp_path / "traces", good=60)
    alone = scan_workflows(root)
    killed: list[int] = []
    hooked = "_enlarge" if when == "started" else "_record"
    original = getattr(scan, hooked)

    def killing(argument: Any) -> Any:
        if not killed:
            kill_workers(killed)
        return original(argument)

    monkeypatch.setattr(scan, hooked, killing)
    assert scan_workflows(root, processes=2) == alone
    assert all(gone(pid) for pid in killed)
    if when == "started":
        assert killed


@pytest.mark.parametrize("when", ["starting", "reading"])
def test_ctrl_c_leaves_no_worker_behind(
    tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Interrupted while the workers start (after the second) or once lines come in."""
    root = awkward_root(tmp_path / "traces", good=60)
    workers: list[int] = []
    calls: list[object] = []
    start_worker = scan._start_worker

    def started(*args: Any) -> Any:  # every worker started, done by now or not
        worker = start_worker(*args)
        if worker is not None and worker[0].pid:
            workers.append(worker[0].pid)
        return worker

    def interrupted(argument: object) -> None:
        calls.append(argument)
        if when == "reading" or len(calls) == 3:  # _enlarge: twice for each worker
            raise KeyboardInterrupt

    monkeypatch.setattr(scan, "_start_worker", started)
    monkeypatch.setattr(scan, "_enlarge" if when == "starting" else "_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan_workflows(root, processes=3)
    if when == "starting":
        assert len(workers) == 2
    assert all(gone(pid) for pid in workers)
    assert multiprocessing.active_children() == []


def worker_lines(path: Path, identity: tuple[int, int], batches: list[list[str]]) -> list[Any]:
    """What a worker sends, run here: its batches' lines, batch by batch."""
    tasks, to_worker = multiprocessing.Pipe(duplex=False)
    from_worker, results = multiprocessing.Pipe(duplex=False)
    to_worker.send(batches)
    previous = signal.getsignal(signal.SIGINT)
    try:
        scan._read_ends(tasks, results, str(path), identity)
    finally:
        signal.signal(signal.SIGINT, previous)
    return [from_worker.recv() for _ in batches]


def test_a_worker_sends_last_lines_and_none_for_what_it_leaves_to_the_parent(
    tmp_path: Path,
) -> None:
    root = awkward_root(tmp_path / "traces")
    identity = file_id(os.stat(root))
    batches = [["wf-000", "wf-empty", "wf-fifo"], ["wf-torn", "wf-malformed", "wf-gone"]]
    first, second = worker_lines(root, identity, batches)
    latest = lines("wf-000", 3, last_slog={"msg": "at", "fields": {"n": "1"}})
    assert first == [latest.encode().rstrip(b"\n"), None, None]
    assert second == [lines("wf-torn", 2).encode().rstrip(b"\n"), b"[1]", None]
    # Another directory under the name the parent opened: nothing is read there.
    elsewhere = tmp_path / "elsewhere"
    awkward_root(elsewhere)
    assert worker_lines(elsewhere, identity, batches) == [[None] * 3, [None] * 3]


def test_file_source_lists_the_same_entries_with_workers(
    tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = awkward_root(tmp_path / "traces")
    monkeypatch.setattr(files, "usable_cores", lambda: 1)
    alone = FileSource(root).list_workflows()
    monkeypatch.setattr(files, "usable_cores", lambda: 3)
    assert FileSource(root).list_workflows() == alone
    assert [entry.workflow_id for entry in alone] == sorted(e.workflow_id for e in alone)


def test_a_listing_asks_once_whether_each_writer_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(5):
        name = f"wf-{number}"
        put_trace(tmp_path, name, lines(name, 1, pid=os.getpid(), pid_start=None))
    put_trace(tmp_path, "wf-other", lines("wf-other", 1, pid=1))
    put_trace(tmp_path, "wf-done", lines("wf-done", 1, status="completed", pid=2))
    asked: list[tuple[int, int | None]] = []

    def alive(pid: int, start: int | None = None) -> bool:
        asked.append((pid, start))
        return pid == os.getpid()

    monkeypatch.setattr(files, "process_alive", alive)
    statuses = {e.workflow_id: e.status for e in FileSource(tmp_path).list_workflows()}
    assert sorted(asked) == [(1, None), (os.getpid(), None)]
    assert statuses == {
        **{f"wf-{n}": "running" for n in range(5)},
        "wf-other": "lost",
        "wf-done": "completed",
    }


def test_ps_leaves_the_collector_as_it_found_it(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-1", lines("wf-1", 1))
    request = Request(command="ps", options=GlobalOptions(trace_dir=str(tmp_path)))
    console = Console(io.StringIO(), io.StringIO(), False)
    assert gc.isenabled()
    assert commands.dispatch(console, request) == exitcodes.OK
    assert gc.isenabled()
    gc.disable()
    try:
        commands.dispatch(console, request)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert console.out.getvalue().startswith("wf-1")


# -- flowctl ps with workers ------------------------------------------------------------


def ps(root: Path, *options: str) -> tuple[int, str, str]:
    """``flowctl ps`` run here: its exit code, output and warnings."""
    out, err = io.StringIO(), io.StringIO()
    options_given = GlobalOptions(trace_dir=str(root), json="--json" in options)
    code = commands.dispatch(Console(out, err, False), Request("ps", options_given))
    return code, out.getvalue(), err.getvalue()


def without_ages(output: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "age_seconds"} for item in json.loads(output)]


def test_ps_prints_the_same_with_workers_as_without(
    tmp_path: Path, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = awkward_root(tmp_path / "traces")
    monkeypatch.setattr(files, "usable_cores", lambda: 1)
    text, as_json = ps(root), ps(root, "--json")
    assert text[0] == exitcodes.BAD_TRACE and "wf-malformed: no valid records" in text[2]
    monkeypatch.setattr(files, "usable_cores", lambda: 3)
    assert ps(root) == text
    code, output, errors = ps(root, "--json")
    assert (code, errors) == (as_json[0], as_json[2])
    assert without_ages(output) == without_ages(as_json[1])


def test_flowctl_as_a_process_starts_its_workers(tmp_path: Path) -> None:
    """The fork server and the workers start from flowctl's own process (no main module
    to import), and it lists what a scan in one process lists."""
    root = awkward_root(tmp_path / "traces")
    code = """
        import sys
        from doeff_flow_core.tracefiles import scan
        from flowctl import cli
        from flowctl.sources import files

        scan.PARALLEL_MIN, scan.BATCH = 0, 4
        files.usable_cores = lambda: 2
        started = []
        start = scan._start_worker
        def counted(*args):
            worker = start(*args)
            started.append(worker is not None)
            return worker
        scan._start_worker = counted
        code = cli.main()
        print(f"workers: {sum(started)}", file=sys.stderr)
        sys.exit(code)
    """
    done = run_python(code, "--trace-dir", root, "ps")
    assert done.stderr.endswith("workers: 2\n"), done.stderr
    listed = (done.returncode, done.stdout, done.stderr.removesuffix("workers: 2\n"))
    assert listed == ps(root)
