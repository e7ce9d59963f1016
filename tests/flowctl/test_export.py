"""``flowctl export`` as a process, over traces written by real doeff programs: Chrome
Trace Event JSON, OTLP/JSON checked against the official schema, and the SVG timeline
(tasks that never overlap sharing lanes); damaged traces, bad ids, unwritable
destinations, memory on long traces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from flowctl import exitcodes
from flowctl.export.svg_layout import Extent, Lane, lane_names, pack
from tests.support.flowctl import assert_one_error_line, flowctl
from tests.support.flowd import flowd
from tests.support.otlp_schema import parse_request, spans_of
from tests.support.procs import PROJECT_ROOT, python_command, python_env, run_command, run_python
from tests.support.traces import PAGES, page_args, paged_records, put_trace, read_jsonl, record_line
from tests.support.workflows import write_traces

SVG = "{http://www.w3.org/2000/svg}"
MINUTE = "2026-01-01T12:00:"
ETL_FUNCTIONS = {"nightly_etl", "plan", "ingest", "extract", "fetch", "transform", "load", "report"}
DOCS, BATCH = 50, 5

# One task per document, BATCH at a time: many short tasks, never more than BATCH at once.
FAN_OUT = r"""
import asyncio, sys
from doeff import Await, Gather, Spawn, do, slog
from doeff_flow_core import run_workflow

@do
def review(doc):
    yield slog("reviewing", doc=doc)
    yield Await(asyncio.sleep(0.02))
    return doc

@do
def fan_out(docs, batch):
    reviewed = []
    for first in range(0, docs, batch):
        tasks = []
        for doc in range(first, min(first + batch, docs)):
            tasks.append((yield Spawn(review(doc))))
        reviewed += yield Gather(*tasks)
    return len(reviewed)

run_workflow(fan_out(int(sys.argv[3]), int(sys.argv[4])), sys.argv[2], sys.argv[1])
"""


def run_example(trace_dir: Path, workflow_id: str, env: dict[str, str]) -> None:
    done = run_command(
        [
            sys.executable,
            str(PROJECT_ROOT / "examples" / "timeline.py"),
            "--workflow-id",
            workflow_id,
            "--trace-dir",
            str(trace_dir),
        ],
        env=env,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real runs: nested calls in spawned tasks with slog (twice for ``wf-twice``), a
    failure with hostile text in its error; and a real trace damaged every way at once."""
    base = tmp_path_factory.mktemp("export")
    trace_dir = base / "traces"
    env = {"XDG_STATE_HOME": str(base / "state")}
    for workflow_id in ("wf-etl", "wf-twice", "wf-twice"):
        run_example(trace_dir, workflow_id, env)
    write_traces(trace_dir, ("wf-fail", "fail", 0), ("wf-tasks", "tasks", 2), env=env)
    done = run_python(FAN_OUT, trace_dir, "wf-fanout", DOCS, BATCH, env=env)
    assert done.returncode == 0, done.stderr
    lines = (trace_dir / "wf-etl" / "trace.jsonl").read_text().split("\n")[:-1]
    damaged = [*lines[:5], "not json at all", *lines[9:20], "{]", *lines[20:-3]]
    put_trace(trace_dir, "wf-damaged", "\n".join(damaged) + '\n{"workflow_id": "wf-dam')
    put_trace(trace_dir, "wf-corrupt", b"\x00\xffnot json at all\n{]\n")
    return trace_dir


def export(traces: Path, *args: object, **kw: Any) -> subprocess.CompletedProcess[str]:
    return flowctl("--trace-dir", traces, "export", *args, **kw)


def exported(traces: Path, *args: object) -> str:
    done = export(traces, *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def tasks_with_calls(traces: Path, workflow_id: str) -> set[int | None]:
    records = read_jsonl(traces / workflow_id / "trace.jsonl")
    return {record["task"] for record in records if record["trace"]}


def lane_name(task: int | None) -> str:
    return "root" if task is None else f"task {task}"


# -- chrome ----------------------------------------------------------------------------------


def chrome(traces: Path, workflow_id: str) -> list[dict[str, Any]]:
    document = json.loads(exported(traces, workflow_id, "--format", "chrome"))
    assert document["displayTimeUnit"] == "ms"
    events: list[dict[str, Any]] = document["traceEvents"]
    for event in events:
        assert {"name", "ph", "ts", "pid", "tid"} <= event.keys(), event
        assert isinstance(event["ts"], int) and isinstance(event["tid"], int)
        if event["ph"] == "X":
            assert isinstance(event["dur"], int) and event["dur"] >= 0, event
        if event["ph"] == "i":
            assert event["s"] == "t", event
    return events


def assert_slices_nest(events: list[dict[str, Any]]) -> None:
    """On each thread, every slice lies inside the one open around its start."""
    threads: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            threads[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    for slices in threads.values():
        open_slices: list[tuple[int, int]] = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while open_slices and open_slices[-1][1] <= start and open_slices[-1][1] < end:
                open_slices.pop()
            if open_slices:
                outer = open_slices[-1]
                assert outer[0] <= start and end <= outer[1], (outer, (start, end))
            open_slices.append((start, end))


def test_chrome_has_one_thread_per_task_nested_calls_slog_and_spawn_arrows(
    traces: Path,
) -> None:
    events = chrome(traces, "wf-etl")
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(map(lane_name, tasks_with_calls(traces, "wf-etl")))
    assert len(names) == 4  # the root and three spawned tasks
    slices = [e for e in events if e["ph"] == "X"]
    assert {e["tid"] for e in slices} == set(names)
    assert {e["name"] for e in slices} == ETL_FUNCTIONS | {"wf-etl"}
    assert_slices_nest(events)
    fetch = next(e for e in slices if e["name"] == "fetch")
    assert fetch["args"]["file"].endswith("timeline.py") and fetch["args"]["status"] == "ok"
    assert isinstance(fetch["args"]["line"], int) and "steps" in fetch["args"]
    slogs = [e for e in events if e["ph"] == "i" and e["cat"] == "slog"]
    assert {e["name"] for e in slogs} == {"planning", "extracting", "loaded", "done"}
    assert {"source": "users", "page": "0"} in [e["args"] for e in slogs]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == 3 and starts.keys() == ends.keys()
    root = next(tid for tid, name in names.items() if name == "root")
    assert {e["tid"] for e in starts.values()} == {root}
    assert {e["tid"] for e in ends.values()} == set(names) - {root}


def test_chrome_of_a_failed_run_shows_the_error(traces: Path) -> None:
    events = chrome(traces, "wf-fail")
    workflow = next(e for e in events if e["ph"] == "X" and e["cat"] == "workflow")
    assert workflow["args"]["status"] == "error"
    assert workflow["args"]["error"].startswith("ValueError: bad \x1b[2J")  # exact in JSON
    errors = [e for e in events if e["ph"] == "i" and e["cat"] == "error"]
    assert errors and {e["name"] for e in errors} == {"ValueError"}
    assert_slices_nest(events)


def test_chrome_shows_each_run_as_a_process(traces: Path) -> None:
    events = chrome(traces, "wf-twice")
    processes = [e for e in events if e["name"] == "process_name"]
    assert [e["pid"] for e in processes] == [1, 2]
    assert all(e["args"]["name"].startswith("wf-twice run ") for e in processes)
    workflows = [e for e in events if e["ph"] == "X" and e["cat"] == "workflow"]
    assert [e["pid"] for e in workflows] == [1, 2]


# -- otlp ------------------------------------------------------------------------------------


def attributes(items: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind)
    return values


def test_otlp_parses_with_the_official_schema(traces: Path) -> None:
    message = parse_request(exported(traces, "wf-etl", "--format", "otlp"))
    records = read_jsonl(traces / "wf-etl" / "trace.jsonl")
    (resource,) = message.resource_spans
    assert attributes(resource.resource.attributes) == {
        "service.name": "doeff-flow",
        "host.name": records[0]["host"],
        "process.pid": records[0]["pid"],
    }
    spans = spans_of(message)
    by_id = {span.span_id: span for span in spans}
    assert len(by_id) == len(spans) and len({span.trace_id for span in spans}) == 1
    (workflow,) = [span for span in spans if not span.parent_span_id]
    assert workflow.name == "wf-etl" and workflow.status.code == 1  # STATUS_CODE_OK
    calls = [span for span in spans if span.parent_span_id]
    assert {span.name for span in calls} == ETL_FUNCTIONS
    tasks: set[int | None] = {None}
    for span in calls:
        attrs = attributes(span.attributes)
        assert attrs["code.function"] == span.name
        assert attrs["code.filepath"].endswith("timeline.py") and attrs["code.lineno"] > 0
        assert attrs["doeff.workflow_id"] == "wf-etl"
        parent = by_id[span.parent_span_id]
        assert parent.start_time_unix_nano <= span.start_time_unix_nano
        assert span.end_time_unix_nano <= parent.end_time_unix_nano
        if "doeff.task" in attrs:
            tasks.add(attrs["doeff.task"])
        if span.name == "ingest":  # a task's first call: spawned by the root's call
            (link,) = span.links
            assert link.span_id == span.parent_span_id
            assert by_id[link.span_id].name == "nightly_etl"
    assert tasks == tasks_with_calls(traces, "wf-etl")


def test_otlp_of_a_failed_run_has_error_status(traces: Path) -> None:
    spans = spans_of(parse_request(exported(traces, "wf-fail", "--format", "otlp")))
    (workflow,) = [span for span in spans if not span.parent_span_id]
    assert workflow.status.code == 2 and workflow.status.message.startswith("ValueError")
    assert any(event.name == "exception" for event in workflow.events)


# -- svg -------------------------------------------------------------------------------------


def svg(traces: Path, workflow_id: str, *args: object) -> ET.Element:
    return ET.fromstring(exported(traces, workflow_id, "--format", "svg", *args))


def texts(root: ET.Element, css: str | None = None) -> list[str]:
    return [
        "".join(node.itertext())
        for node in root.iter(f"{SVG}text")
        if css is None or node.get("class") == css
    ]


def bars(root: ET.Element) -> list[ET.Element]:
    """The calls drawn (not the legend's samples)."""
    (spans,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "spans"]
    return [g for g in spans.iter(f"{SVG}g") if "c" in (g.get("class") or "").split()]


@dataclass(frozen=True)
class DrawnLane:
    top: float
    bottom: float
    tasks: frozenset[str]  # "root", "task N"


def lane_tasks(tip: str) -> set[str]:
    """The tasks a lane's tooltip names: "root", "task 3: f(x=1)" or "3 tasks: 1, 4, 9"."""
    shared = re.fullmatch(r"(\d+) tasks: (.*)", tip)
    if shared is None:
        name = tip.split(": ", 1)[0]
        assert re.fullmatch(r"root|task \d+", name), tip
        return {name}
    tasks = {f"task {task}" for task in shared.group(2).split(", ")}
    assert len(tasks) == int(shared.group(1)) > 1, tip
    return tasks


def drawn_lanes(root: ET.Element) -> list[DrawnLane]:
    """Each lane's band and the tasks its tooltip says it holds."""
    found = []
    for lane in (g for g in root.iter(f"{SVG}g") if g.get("class") == "lane"):
        band = lane.find(f"{SVG}rect")
        assert band is not None
        top = float(band.get("y", ""))
        tasks = lane_tasks(lane.findtext(f"{SVG}title") or "")
        found.append(DrawnLane(top, top + float(band.get("height", "")), frozenset(tasks)))
    return found


def bar_task(bar: ET.Element) -> str:
    """The task a bar's tooltip names ("root", "task N")."""
    tip = bar.findtext(f"{SVG}title") or ""
    found = re.search(r" · (root|task \d+)$", tip, re.MULTILINE)
    assert found, tip
    return found.group(1)


def assert_lanes_hold_their_bars(root: ET.Element) -> None:
    """Every bar lies in its task's lane, and in each row one task's bars end before the
    next task's begin: bars in a lane never overlap."""
    lanes = drawn_lanes(root)
    rows: dict[float, dict[str, tuple[float, float]]] = defaultdict(dict)
    for bar in bars(root):
        rect = bar.find(f"{SVG}rect")
        assert rect is not None
        y, x, width = (float(rect.get(name, "")) for name in ("y", "x", "width"))
        task = bar_task(bar)
        (lane,) = [lane for lane in lanes if lane.top <= y < lane.bottom]
        assert task in lane.tasks, (task, lane)
        left, right = rows[y].get(task, (x, x + width))
        rows[y][task] = (min(left, x), max(right, x + width))
    for extents in rows.values():
        ordered = sorted(extents.values())
        for (_, end), (start, _) in pairwise(ordered):
            assert end <= start, ordered


def test_svg_draws_a_lane_per_concurrent_task_and_labels_calls(traces: Path) -> None:
    root = svg(traces, "wf-etl")
    assert root.tag == f"{SVG}svg"
    lanes = drawn_lanes(root)
    assert lanes[0].tasks == {"root"} and texts(root, "lname")[0] == "root"
    named = sorted(task for lane in lanes for task in lane.tasks)
    assert named == sorted(map(lane_name, tasks_with_calls(traces, "wf-etl")))
    assert all(len(lane.tasks) == 1 for lane in lanes)
    # a task's lane is named by its outermost call (with its arguments, where recorded)
    assert [name.partition("(")[0] for name in texts(root, "lname")[1:]] == ["ingest"] * 3
    (title,) = texts(root, "title")
    assert title.startswith("wf-etl · completed · ")
    labels = {label.text for g in bars(root) for label in g.findall(f"{SVG}text")}
    assert {"wf-etl", "nightly_etl", "ingest", "extract", "fetch"} <= labels  # the long calls
    tips = [g.findtext(f"{SVG}title") or "" for g in bars(root)]
    # the call, with its arguments where recorded (Python 3.12+): "fetch(source='users', page=0)"
    called = {tip.split("\n")[0].partition("(")[0] for tip in tips}
    assert called == ETL_FUNCTIONS | {"workflow wf-etl"}
    assert any(re.match(r"fetch(\(.*\))?\ntimeline.py:", tip) and "task " in tip for tip in tips)
    slogs = [p for p in root.iter(f"{SVG}path") if p.get("class") == "slog" and len(p)]
    assert any("extracting source=users page=0" in "".join(p.itertext()) for p in slogs)
    assert not [g for g in bars(root) if "err" in g.get("class", "")]
    assert "calls drawn" in exported(traces, "wf-etl", "--format", "svg")  # the comment
    assert_lanes_hold_their_bars(root)
    workers = svg(traces, "wf-tasks")  # two workers taking turns: at once, so apart
    expected = sorted(map(lane_name, tasks_with_calls(traces, "wf-tasks")))
    drawn = sorted(task for lane in drawn_lanes(workers) for task in lane.tasks)
    assert len(expected) == 3 and drawn == expected
    assert_lanes_hold_their_bars(workers)


def test_svg_packs_many_short_tasks_into_few_lanes(traces: Path) -> None:
    """Fifty tasks, five at a time: every one drawn and labelled with its function, in
    lanes shared by tasks that never overlap (two batches' worth at most, not fifty)."""
    root = svg(traces, "wf-fanout")
    spawned = set(map(lane_name, tasks_with_calls(traces, "wf-fanout") - {None}))
    assert len(spawned) == DOCS
    (sub,) = texts(root, "sub")
    assert f"in {DOCS + 1} tasks" in sub and "not drawn" not in sub
    lanes = drawn_lanes(root)
    assert lanes[0].tasks == {"root"} and len(lanes) <= 2 * BATCH + 1
    assert frozenset().union(*(lane.tasks for lane in lanes[1:])) == spawned
    assert max(len(lane.tasks) for lane in lanes) > 1
    pattern = r"root|review(\(doc=\d+\))?|tasks \d+(, \d+)*|\d+ tasks"
    assert all(re.fullmatch(pattern, name) for name in texts(root, "lname"))
    tips = [(bar, bar.findtext(f"{SVG}title") or "") for bar in bars(root)]
    reviews = [bar for bar, tip in tips if re.match(r"review(\(doc=\d+\))?\n", tip)]
    assert sorted(bar_task(bar) for bar in reviews) == sorted(spawned)  # one bar each
    assert all(texts(bar) == ["review"] for bar in reviews)
    assert_lanes_hold_their_bars(root)


def test_svg_lanes_stay_bounded_when_every_task_overlaps(tmp_path: Path) -> None:
    """120 tasks all open until the run ends: 100 lanes (the root's and 99 tasks'), the
    rest counted as not drawn."""
    frames = [{"function": "work", "file": "/w/wide.py", "line": 1, "code": None}]
    lines = [
        record_line("wf-wide", step, trace=frames, task=step, updated_at=f"{MINUTE}{step // 4:02d}")
        for step in range(1, 121)
    ]
    lines.append(
        record_line("wf-wide", 121, trace=[], status="completed", updated_at=f"{MINUTE}31")
    )
    put_trace(tmp_path, "wf-wide", "".join(lines))
    root = ET.fromstring(exported(tmp_path, "wf-wide", "--format", "svg"))
    (sub,) = texts(root, "sub")
    assert "in 121 tasks (21 not drawn)" in sub
    lanes = drawn_lanes(root)
    assert len(lanes) == 100 and all(len(lane.tasks) == 1 for lane in lanes)
    assert_lanes_hold_their_bars(root)


def test_packing_takes_the_lowest_lane_free_a_gap_after_its_last_task() -> None:
    extents = [
        Extent(1, 0.0, 10.0, 1, 1),
        Extent(2, 1.0, 4.0, 1, 3),
        Extent(3, 4.5, 6.0, 1, 1),  # lane 1 is free from 4 + the gap
        Extent(4, 10.2, 12.0, 1, 2),  # lane 0 frees at 10.5 only: lane 1
        Extent(5, 10.5, 11.0, 1, 1),
        Extent(6, 10.6, 11.0, 1, 1),  # both busy, and no third lane allowed
    ]
    packing = pack(reversed(extents), gap=0.5, limit=2)
    assert packing.lanes == (Lane((1, 5), 1, 1), Lane((2, 3, 4), 1, 3))
    assert packing.left_out == 1
    assert lane_names(Lane((7,), 1, 1)) == ["task 7"]
    assert lane_names(Lane((7,), 1, 1, "f(x=1)")) == ["f(x=1)"]
    assert lane_names(Lane((7,), 1, 2, "f(x=1)")) == ["f(x=1)", "task 7"]
    assert lane_names(Lane((None,), 0, 1, "main()")) == ["root", "main()"]
    assert lane_names(Lane((10, 1), 1, 1)) == ["tasks 1, 10"]
    assert lane_names(Lane((3, 12, 100), 1, 1)) == ["3 tasks"]
    assert lane_names(Lane((3, 12, 100, 7), 1, 2)) == ["4 tasks", "3, 7, 12 …"]


def test_svg_of_a_failed_run_is_red_and_shows_the_error_escaped(traces: Path) -> None:
    root = svg(traces, "wf-fail")
    (title,) = texts(root, "title")
    assert title.startswith("wf-fail · failed · ")
    (error,) = texts(root, "errtext")
    assert error.startswith("ValueError: bad \\x1b[2J")  # shown, never acted on
    failed = [g for g in bars(root) if "err" in g.get("class", "").split()]
    assert failed and any("wf-fail" in "".join(g.itertext()) for g in failed)
    style = "".join(root.find(f"{SVG}style").itertext())  # type: ignore[union-attr]
    assert ".c.err rect{fill:#ff8182" in style
    assert [p for p in root.iter(f"{SVG}path") if p.get("class") == "exc"]


def test_svg_draws_the_last_run(traces: Path) -> None:
    root = svg(traces, "wf-twice")
    (sub,) = texts(root, "sub")
    runs = [r["run"] for r in read_jsonl(traces / "wf-twice" / "trace.jsonl")]
    assert f"run {runs[-1]} (the last of 2 runs)" in sub and runs[0] != runs[-1]


# -- damaged traces, bad input, destinations ---------------------------------------------------


def test_a_damaged_trace_still_exports_with_open_calls_incomplete(traces: Path) -> None:
    events = chrome(traces, "wf-damaged")
    statuses = {e["args"]["status"] for e in events if e["ph"] == "X"}
    assert "incomplete" in statuses and "ok" in statuses
    assert_slices_nest(events)
    spans = spans_of(parse_request(exported(traces, "wf-damaged", "--format", "otlp")))
    assert any(attributes(span.attributes).get("doeff.incomplete") for span in spans)
    root = svg(traces, "wf-damaged")
    assert [g for g in bars(root) if "inc" in g.get("class", "").split()]
    assert " · lost · " in texts(root, "title")[0]  # its writer, long gone
    done = export(traces, "wf-damaged", "--verbose", "--format", "svg")
    assert done.returncode == 0
    (report,) = [line for line in done.stderr.splitlines() if "wf-damaged:" in line]
    assert "2 malformed lines skipped" in report and "a torn last line left out" in report


@pytest.mark.parametrize(
    ("workflow_id", "code"),
    [
        ("wf-nope", exitcodes.NOT_FOUND),
        ("../../etc", exitcodes.USAGE),
        ("wf-corrupt", exitcodes.BAD_TRACE),
    ],
)
def test_bad_workflows_fail_as_history_does_and_write_nothing(
    traces: Path, tmp_path: Path, workflow_id: str, code: int
) -> None:
    history = flowctl("--trace-dir", traces, "history", workflow_id)
    target = tmp_path / "out.json"
    target.write_text("before")
    done = export(traces, workflow_id, "-o", target)
    assert_one_error_line(done, code, history.stderr.strip().removeprefix("flowctl: "))
    assert done.stderr == history.stderr and done.stdout == ""
    assert os.listdir(tmp_path) == ["out.json"] and target.read_text() == "before"


def test_the_format_follows_the_output_suffix(traces: Path, tmp_path: Path) -> None:
    for name in ("a.svg", "b.json", "c.trace", "d.json"):
        extra = ["--format", "otlp"] if name == "d.json" else []
        done = export(traces, "wf-tasks", "-o", tmp_path / name, *extra)
        assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert (tmp_path / "a.svg").read_text().startswith("<svg ")
    assert json.loads((tmp_path / "b.json").read_text())["traceEvents"]
    assert json.loads((tmp_path / "c.trace").read_text())["traceEvents"]
    assert parse_request((tmp_path / "d.json").read_text()).resource_spans
    assert sorted(os.listdir(tmp_path)) == ["a.svg", "b.json", "c.trace", "d.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.svg").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("missing/out.svg", "No such file or directory"),
        ("file/out.svg", "Not a directory"),
        ("dir", "is a directory"),
    ],
)
def test_an_unwritable_destination_is_one_line_and_leaves_nothing(
    traces: Path, tmp_path: Path, name: str, detail: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    done = export(traces, "wf-etl", "-o", tmp_path / name)
    assert_one_error_line(done, exitcodes.CANNOT_WRITE, f"cannot write {tmp_path / name}: ")
    assert detail in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"] and not os.listdir(tmp_path / "dir")


def test_a_write_that_fails_half_way_leaves_the_old_file(traces: Path, tmp_path: Path) -> None:
    """A file size limit makes the write fail after the first few kilobytes."""
    target = tmp_path / "out.json"
    target.write_text("the old export")
    code = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from flowctl.cli import main
        sys.exit(main(["--trace-dir", {str(traces)!r}, "export", "wf-etl", "-o", {str(target)!r}]))
    """
    done = run_command(python_command(code))
    assert_one_error_line(done, exitcodes.CANNOT_WRITE, "File too large")
    assert os.listdir(tmp_path) == ["out.json"] and target.read_text() == "the old export"


def test_stdout_by_default_and_a_report_only_when_verbose(traces: Path) -> None:
    quiet = export(traces, "wf-tasks")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["traceEvents"]
    loud = export(traces, "wf-tasks", "-v", "--format", "otlp")
    (report,) = [line for line in loud.stderr.splitlines() if "wf-tasks:" in line]
    count = len(spans_of(parse_request(loud.stdout)))
    assert report == f"flowctl: wf-tasks: {count} spans of 1 run as otlp to stdout"


def test_through_flowd_a_workflow_under_another_root_is_found(traces: Path, tmp_path: Path) -> None:
    with flowd("--root", traces, state=tmp_path / "state") as daemon:
        found = flowctl("--socket", daemon.socket, "export", "wf-tasks", cwd=tmp_path)
        assert found.returncode == 0, found.stderr
        assert found.stdout == exported(traces, "wf-tasks")
        missing = flowctl("--socket", daemon.socket, "export", "wf-nope", cwd=tmp_path)
        assert_one_error_line(missing, exitcodes.NOT_FOUND, "no workflow 'wf-nope'")


def test_export_loads_neither_doeff_nor_prompt_toolkit(traces: Path, tmp_path: Path) -> None:
    code = f"""
        import sys
        from flowctl.cli import main
        for fmt in ("chrome", "otlp", "svg"):
            main(["--trace-dir", {str(traces)!r}, "export", "wf-etl", "--format", fmt,
                  "-o", {str(tmp_path)!r} + "/out." + fmt])
        roots = {{name.split(".")[0] for name in sys.modules}}
        print(sorted(roots & {{"doeff", "doeff_vm", "flowd", "prompt_toolkit"}}))
    """
    done = run_command(python_command(code))
    assert done.stdout == "[]\n", done.stderr
    assert len(os.listdir(tmp_path)) == 3


# -- long traces -------------------------------------------------------------------------------


def synthetic_trace(path: Path, records: int) -> None:
    """``records`` records of a run that keeps calling: main > stage > call, with slog."""
    with path.open("w") as out:
        for step in range(1, records + 1):
            frames = [
                {"function": "main", "file": "/w/long.py", "line": 3, "code": None},
                {"function": "stage", "file": "/w/long.py", "line": 10 + step // 40, "code": None},
                {"function": "call", "file": "/w/long.py", "line": 20 + step % 4, "code": None},
            ][: 1 + step % 3]
            second, milli = divmod(step, 1000)
            out.write(
                record_line(
                    "wf-long",
                    step,
                    trace=frames,
                    updated_at=f"2026-01-01T12:{second // 60 % 60:02d}:{second % 60:02d}"
                    f".{milli:03d}+00:00",
                    current_effect="slog('tick')" if step % 50 == 0 else "Get('k')",
                    last_slog={"msg": "tick", "fields": {"step": str(step)}},
                )
            )


def peak_rss_kib(traces: Path, fmt: str) -> int:
    code = f"""
        import resource, sys
        from flowctl.cli import main
        code = main(["--trace-dir", {str(traces)!r}, "export", "wf-long", "--format", {fmt!r},
                     "-o", "/dev/null"])
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        sys.exit(code)
    """
    done = subprocess.run(
        python_command(code), env=python_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def write_long_traces(base: Path) -> tuple[Path, Path]:
    """Trace directories holding ``wf-long`` of 20,000 and of 80,000 records. The short
    trace is long enough already to fill the reader's blocks (bounded too)."""
    short, long = base / "short", base / "long"
    for trace_dir, records in ((short, 20_000), (long, 80_000)):
        (trace_dir / "wf-long").mkdir(parents=True)
        synthetic_trace(trace_dir / "wf-long" / "trace.jsonl", records)
    return short, long


@pytest.fixture(scope="module")
def long_traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    yield write_long_traces(tmp_path_factory.mktemp("long"))


@pytest.mark.parametrize("fmt", ["chrome", "svg"])
def test_memory_does_not_grow_with_the_trace(long_traces: tuple[Path, Path], fmt: str) -> None:
    """Four times the records (40,000 more spans) in about the same memory: nothing keeps
    every span or record (a list of them would cost tens of megabytes more)."""
    short, long = long_traces
    assert peak_rss_kib(long, fmt) < peak_rss_kib(short, fmt) + 8 * 1024


def test_hostile_text_stays_text_in_every_format(tmp_path: Path) -> None:
    name = '<b>&"x"</b>\ud800\ufffe'
    frames = [{"function": name, "file": "/w/<x>.py", "line": 1, "code": None}]
    slog = {"msg": "-- ]]> \x1b[2J", "fields": {"k": "</svg>"}}
    at = [f"2026-01-01T12:00:0{second}+00:00" for second in (1, 2, 3)]
    put_trace(
        tmp_path,
        "wf-hostile",
        record_line("wf-hostile", 1, trace=frames, updated_at=at[0])
        + record_line(
            "wf-hostile",
            2,
            trace=frames,
            current_effect="slog('x')",
            last_slog=slog,
            updated_at=at[1],
        )
        + record_line(
            "wf-hostile", 3, trace=[], status="failed", error="E: <&>\x00", updated_at=at[2]
        ),
    )
    root = ET.fromstring(exported(tmp_path, "wf-hostile", "--format", "svg"))
    tips = [g.findtext(f"{SVG}title") or "" for g in bars(root)]
    assert any(tip.startswith('<b>&"x"</b>\\ud800\\ufffe') for tip in tips)
    slogs = [p.findtext(f"{SVG}title") for p in root.iter(f"{SVG}path") if len(p)]
    assert "-- ]]> \\x1b[2J k=</svg>" in slogs
    events = json.loads(exported(tmp_path, "wf-hostile"))["traceEvents"]
    assert name in {e["name"] for e in events} and "-- ]]> \x1b[2J" in {e["name"] for e in events}
    spans = spans_of(parse_request(exported(tmp_path, "wf-hostile", "--format", "otlp")))
    assert name.replace("\ud800", "\ufffd") in {span.name for span in spans}  # valid UTF-8


def put_paged_trace(trace_dir: Path, workflow_id: str, **kw: Any) -> None:
    records = paged_records(workflow_id=workflow_id, **kw)
    put_trace(trace_dir, workflow_id, "".join(record.to_json() + "\n" for record in records))


def test_calls_from_one_line_export_as_a_span_each_with_their_args(tmp_path: Path) -> None:
    """Records that carry call ids: each of the four calls of a loop is a slice, an OTLP
    span and a bar of its own, with its arguments."""
    put_paged_trace(tmp_path, "wf-pages")
    expected = [page_args(page) for page in range(PAGES)]
    events = chrome(tmp_path, "wf-pages")
    slices = {e["name"]: e for e in events if e["ph"] == "X"}
    pages = [e for e in events if e["ph"] == "X" and e["name"] == "fetch_page"]
    assert [e["args"]["args"] for e in pages] == expected
    assert len({e["ts"] for e in pages}) == PAGES
    assert slices["main"]["args"]["args"] == "region='apac'"
    assert "args" not in slices["wf-pages"]["args"]
    assert_slices_nest(events)
    spans = spans_of(parse_request(exported(tmp_path, "wf-pages", "--format", "otlp")))
    calls = [span for span in spans if span.name == "fetch_page"]
    assert [attributes(span.attributes)["doeff.args"] for span in calls] == expected
    assert len({span.span_id for span in spans}) == len(spans) == PAGES + 2
    pictured = bars(svg(tmp_path, "wf-pages"))
    tips = [g.findtext(f"{SVG}title") or "" for g in pictured]
    drawn = [tip.split("\n") for tip in tips if tip.startswith("fetch_page(")]
    assert [lines[:2] for lines in drawn] == [[f"fetch_page({a})", "pages.py:20"] for a in expected]
    # a visible gap between one call and the next: four bars, never one long one
    edges = []
    for bar in pictured:
        rect = bar.find(f"{SVG}rect")
        if rect is not None and (bar.findtext(f"{SVG}title") or "").startswith("fetch_page("):
            edges.append(
                (float(rect.get("x", "")), float(rect.get("x", "")) + float(rect.get("width", "")))
            )
    assert len(edges) == PAGES
    assert all(left - right >= 0.5 for (_, right), (left, _) in pairwise(sorted(edges))), edges
    # the same loop written without call ids: one span, as before, and no args anywhere
    put_paged_trace(tmp_path, "wf-merged", calls=False, args=False)
    merged = [e for e in chrome(tmp_path, "wf-merged") if e["ph"] == "X"]
    assert [e["name"] for e in merged].count("fetch_page") == 1
    assert not [e for e in merged if "args" in e["args"]]


def test_hostile_args_stay_text_in_every_format(tmp_path: Path) -> None:
    args = '<b>&"x"</b>\ud800\ufffe\x1b[2J'
    frames = [
        {"function": "f", "file": "/w/a.py", "line": 1, "code": None, "call": 3, "args": args}
    ]
    put_trace(
        tmp_path,
        "wf-args",
        record_line("wf-args", 1, trace=frames, updated_at=f"{MINUTE}01+00:00")
        + record_line("wf-args", 2, trace=[], status="completed", updated_at=f"{MINUTE}02+00:00"),
    )
    (call,) = [e for e in chrome(tmp_path, "wf-args") if e["name"] == "f"]
    assert call["args"]["args"] == args  # exact in JSON
    spans = spans_of(parse_request(exported(tmp_path, "wf-args", "--format", "otlp")))
    (otlp_call,) = [span for span in spans if span.name == "f"]
    assert attributes(otlp_call.attributes)["doeff.args"] == args.replace("\ud800", "\ufffd")
    tips = [g.findtext(f"{SVG}title") or "" for g in bars(svg(tmp_path, "wf-args"))]
    assert 'f(<b>&"x"</b>\\ud800\\ufffe\\x1b[2J)' in "\n".join(tips).split("\n")


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "1960-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"]
)
def test_times_far_from_now_still_export_in_every_format(tmp_path: Path, when: str) -> None:
    frames = [{"function": "main", "file": "/w.py", "line": 1, "code": None}]
    put_trace(
        tmp_path,
        "wf-when",
        record_line("wf-when", 1, trace=frames, started_at=when, updated_at=when)
        + record_line("wf-when", 2, trace=[], status="completed", started_at=when, updated_at=when),
    )
    assert json.loads(exported(tmp_path, "wf-when"))["traceEvents"]
    assert len(spans_of(parse_request(exported(tmp_path, "wf-when", "--format", "otlp")))) == 2
    root = ET.fromstring(exported(tmp_path, "wf-when", "--format", "svg"))
    assert "1 call in 1 task" in " ".join(texts(root))


def test_an_empty_trace_exports_an_empty_timeline(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-empty", "")
    assert json.loads(exported(tmp_path, "wf-empty"))["traceEvents"] == []
    assert not parse_request(exported(tmp_path, "wf-empty", "--format", "otlp")).resource_spans
    root = ET.fromstring(exported(tmp_path, "wf-empty", "--format", "svg"))
    assert texts(root, "title") == ["wf-empty · no records"]
