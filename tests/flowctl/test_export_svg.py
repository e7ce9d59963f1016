"""``flowctl export`` telling calls, tasks and endings apart: a bar per call with its
arguments and a lane named by its task's outermost call (examples/report.py, run for
real), failed calls red and cancelled ones grey, and a run with no terminal record said to
be lost, unknown or still running in the SVG and in Chrome's export."""

from __future__ import annotations

import json
import re
import signal
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from io import StringIO
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from doeff_flow_core.timeline.spans import CALL, CANCELLED, ERROR, OK, WORKFLOW, Span
from flowctl.export.svg import write_svg
from flowctl.export.svg_layout import LANE_CHARS_MOST, survey
from tests.flowctl.test_export import SVG, bars, drawn_lanes, exported, texts
from tests.support.procs import PROJECT_ROOT, run_command
from tests.support.traces import put_trace, record_line
from tests.support.workflows import start_blocked

REGIONS = ("emea", "apac", "latam")
needs_args = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="only the exact tracer (sys.monitoring, Python 3.12+) records call ids and args",
)


def tip(element: ET.Element) -> str:
    return element.findtext(f"{SVG}title") or ""


def rect(bar: ET.Element) -> tuple[float, float]:
    """A bar's left edge and right edge."""
    shape = bar.find(f"{SVG}rect")
    assert shape is not None
    x = float(shape.get("x", ""))
    return x, x + float(shape.get("width", ""))


def chrome_events(trace_dir: Path, workflow_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(exported(trace_dir, workflow_id))["traceEvents"]
    return events


def workflow_slice(events: list[dict[str, Any]]) -> dict[str, Any]:
    (workflow,) = [e for e in events if e["ph"] == "X" and e["cat"] == "workflow"]
    return workflow


class Report(NamedTuple):
    trace_dir: Path
    failing_page: int  # latam's page that raised


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """examples/report.py --fail, for real: three regions fetched page by page in spawned
    tasks; one of latam's pages raises while apac is still fetching."""
    trace_dir = tmp_path_factory.mktemp("report")
    script = str(PROJECT_ROOT / "examples" / "report.py")
    done = run_command([sys.executable, script, "--fail", "--trace-dir", str(trace_dir)])
    failed = re.search(r"failed: latam page (\d+): ", done.stdout)
    assert done.returncode == 0 and failed, done.stderr
    return Report(trace_dir, int(failed.group(1)))


@needs_args
def test_each_call_is_a_bar_of_its_own_named_with_its_arguments(report: Report) -> None:
    """Consecutive calls of fetch_page from one line: a bar each, tooltip naming the call
    with its arguments, one ending before the next begins."""
    root = ET.fromstring(exported(report.trace_dir, "report-fail", "--format", "svg"))
    pages: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for bar in bars(root):
        first = tip(bar).split("\n")[0]
        call = re.fullmatch(r"fetch_page\(region='(\w+)', page=(\d+), fail=True\)", first)
        if call:
            pages[call.group(1)].append((int(call.group(2)), *rect(bar)))
    latam = sorted(page for page, _, _ in pages["latam"])
    assert latam == list(range(report.failing_page + 1))  # up to the page that raised
    for region in ("emea", "apac"):  # as far as each got
        drawn = sorted(page for page, _, _ in pages[region])
        assert drawn == list(range(len(drawn))) and drawn, (region, drawn)
    for drawn in pages.values():
        ordered = sorted(drawn)
        for (_, _, right), (_, left, _) in pairwise(ordered):
            assert left - right >= 0.5, ordered  # apart, never one merged bar
    tips = [tip(bar) for bar in bars(root)]
    assert any(t.startswith("build_report(fail=True)\nreport.py:") for t in tips)


@needs_args
def test_task_lanes_are_named_by_their_outermost_call(report: Report) -> None:
    root = ET.fromstring(exported(report.trace_dir, "report-fail", "--format", "svg"))
    lanes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert texts(lanes[0], "lname") == ["root"]
    assert texts(lanes[0], "lids") == ["build_report(fail=True)"]
    named: dict[str, tuple[str, str]] = {}
    for lane in lanes[1:]:
        (name,) = texts(lane, "lname")
        (task,) = texts(lane, "lids")
        assert len(name) <= LANE_CHARS_MOST and name.endswith("…")  # clipped
        region = re.match(r"fetch_region\(region='(\w+)', ", name)
        assert region and re.fullmatch(r"task \d+", task), name
        named[region.group(1)] = (task, tip(lane))
    assert sorted(named) == sorted(REGIONS)  # three lanes told apart at a glance
    for region, (task, whole) in named.items():
        assert re.fullmatch(
            rf"{task}: fetch_region\(region='{region}', pages=\d+, fail=True\)", whole
        )
    assert len({task for task, _ in named.values()}) == 3


def test_failed_calls_are_red_and_cancelled_ones_grey(report: Report) -> None:
    """The call that raised and those it unwound through are red; a call left open in
    another task when the run failed is cancelled: grey, dashed, and said so."""
    events = chrome_events(report.trace_dir, "report-fail")
    expected = [e["args"]["status"] for e in events if e["ph"] == "X" and e["cat"] != "workflow"]
    assert {ERROR, CANCELLED} <= set(expected), expected
    root = ET.fromstring(exported(report.trace_dir, "report-fail", "--format", "svg"))
    drawn = [(bar, set((bar.get("class") or "").split())) for bar in bars(root)]
    failed = [bar for bar, css in drawn if "err" in css]
    cancelled = [bar for bar, css in drawn if "cnc" in css]
    calls = [css for _, css in drawn if "d0" not in css]  # not the workflow's own bar
    assert sum("err" in css for css in calls) == expected.count(ERROR)
    assert sum("cnc" in css for css in calls) == expected.count(CANCELLED) > 0
    assert not [bar for bar in failed if bar in cancelled]
    assert all("cancelled: " in tip(bar) for bar in cancelled)
    assert any(tip(bar).startswith("fetch_page") and "latam" in tip(bar) for bar in failed) or (
        sys.version_info < (3, 12)  # no args to tell latam's call by
    )
    style = "".join(root.find(f"{SVG}style").itertext())  # type: ignore[union-attr]
    assert ".c.cnc rect{fill:#e1e4e8" in style and ".c.err rect{fill:#ff8182" in style
    assert "cancelled" in texts(root, "key")


# -- lanes from hand-written records: any Python -------------------------------------------------


def test_lane_names_are_calls_escaped_and_cut_to_the_column(tmp_path: Path) -> None:
    hostile = "region='<b>&\"x\"</b>\x1b[2J'"
    regions = ("emea", "apac", hostile)
    lines = [record_line("wf-lanes", 1, trace=[_frame("main", 1, "")])]
    for task, region in enumerate(regions):
        args = {"emea": "region='emea'", "apac": "region='apac', pages=4"}.get(region, region)
        lines.append(
            record_line(
                "wf-lanes",
                task + 2,
                trace=[_frame("fetch_region", task + 2, args)],
                task=task,
                spawned=[[task, None]],
                updated_at=f"2026-01-01T12:00:0{task + 2}+00:00",
            )
        )
    lines.append(
        record_line(
            "wf-lanes",
            9,
            trace=[],
            status="completed",
            finished_tasks=[[task, "2026-01-01T12:00:08+00:00"] for task in range(3)],
            updated_at="2026-01-01T12:00:09+00:00",
        )
    )
    put_trace(tmp_path, "wf-lanes", "".join(lines))
    root = ET.fromstring(exported(tmp_path, "wf-lanes", "--format", "svg"))
    names = texts(root, "lname")
    assert names[0] == "root"
    assert names[1:] == [
        "fetch_region(region='emea')",  # whole: it fits
        "fetch_region(region='apac', pages…",  # cut at the column's width
        'fetch_region(region=\'<b>&"x"</b>\\…',  # text, never markup
    ]
    tips = [tip(g) for g in root.iter(f"{SVG}g") if g.get("class") == "lane"]
    assert tips[3] == "task 2: fetch_region(region='<b>&\"x\"</b>\\x1b[2J')"
    assert [lane.tasks for lane in drawn_lanes(root)][1:] == [{"task 0"}, {"task 1"}, {"task 2"}]


def _frame(function: str, call: int, args: str) -> dict[str, Any]:
    frame = {"function": function, "file": "/w/lanes.py", "line": 3, "code": None, "call": call}
    return {**frame, "args": args} if args else frame


def test_a_cancelled_call_is_drawn_apart_from_a_failed_one() -> None:
    def span(span_id: int, name: str, status: str, task: int | None, depth: int) -> Span:
        kind = WORKFLOW if depth == 0 else CALL
        return Span(
            "wf",
            "r1",
            span_id,
            None,
            kind,
            name,
            task,
            None,
            None,
            0.0,
            2.0,
            status,
            1,
            2,
            depth=depth,
        )

    spans = [
        span(2, "raiser", ERROR, 0, 1),
        span(3, "abandoned", CANCELLED, 1, 1),
        span(4, "finished", OK, 2, 1),
        span(1, "wf", ERROR, None, 0),
    ]
    out = StringIO()
    write_svg(survey(spans), "wf", spans, out)
    root = ET.fromstring(out.getvalue())
    css = {tip(bar).split("\n")[0]: (bar.get("class") or "").split() for bar in bars(root)}
    assert "err" in css["raiser"] and "cnc" not in css["raiser"]
    assert "cnc" in css["abandoned"] and "err" not in css["abandoned"]
    assert not {"err", "cnc"} & set(css["finished"])


# -- endings: lost, unknown, still running ------------------------------------------------------


def assert_ending(trace_dir: Path, workflow_id: str, word: str, why: str) -> None:
    """The SVG's heading, legend and unended calls, Chrome's workflow span and process
    label, and the OTLP workflow span, all say ``word``."""
    root = ET.fromstring(exported(trace_dir, workflow_id, "--format", "svg"))
    (title,) = texts(root, "title")
    assert f" · {word} · " in title and "still running, or lost" not in title
    assert any(line.startswith(f"{word}: ") and why in line for line in texts(root, "sub"))
    assert f"no end recorded ({word})" in texts(root, "key")
    unended = [bar for bar in bars(root) if "inc" in (bar.get("class") or "").split()]
    assert unended and all(f"\n{word}: no record ended it" in tip(bar) for bar in unended)
    events = chrome_events(trace_dir, workflow_id)
    workflow = workflow_slice(events)
    assert workflow["args"]["status"] == "incomplete"
    assert workflow["args"]["ending"] == word and why in workflow["args"]["ending_why"]
    (label,) = [e for e in events if e["ph"] == "M" and e["name"] == "process_labels"]
    assert label["args"] == {"labels": word} and label["pid"] == workflow["pid"]
    request = json.loads(exported(trace_dir, workflow_id, "--format", "otlp"))
    spans = [s for r in request["resourceSpans"] for g in r["scopeSpans"] for s in g["spans"]]
    (run,) = [s for s in spans if s["name"] == workflow_id and "parentSpanId" not in s]
    said = {a["key"]: a["value"] for a in run["attributes"]}
    assert said["doeff.incomplete"] == {"boolValue": True}
    assert said["doeff.ending"] == {"stringValue": word}


def test_a_trace_written_on_another_host_is_unknown(tmp_path: Path) -> None:
    frames = [{"function": "main", "file": "/w/far.py", "line": 1, "code": None}]
    put_trace(
        tmp_path,
        "wf-far",
        "".join(
            record_line("wf-far", step, trace=frames, pid=1, host="elsewhere.example")
            for step in (1, 2)
        ),
    )
    assert_ending(tmp_path, "wf-far", "unknown", "written on host elsewhere.example")
    hostile = '<b>&"x"</b>'  # text in the SVG, never markup
    put_trace(tmp_path, "wf-odd", record_line("wf-odd", 1, trace=frames, pid=1, host=hostile))
    assert_ending(tmp_path, "wf-odd", "unknown", f"written on host {hostile}")


def test_a_running_worker_is_still_running_and_lost_once_killed(tmp_path: Path) -> None:
    """A real worker blocked in an effect: still running while it lives; killed with
    SIGKILL (no terminal record written), lost."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    worker = start_blocked(tmp_path, "wf-worker", env)
    try:
        assert_ending(tmp_path, "wf-worker", "still running", f"pid {worker.pid}")
    finally:
        worker.send_signal(signal.SIGKILL)  # no terminal record written
        worker.wait(timeout=30)
    assert_ending(tmp_path, "wf-worker", "lost", f"its writer (pid {worker.pid}) is gone")


def test_chrome_and_otlp_mark_the_calls_that_failed_and_nothing_else(report: Report) -> None:
    """The call that raised (latam's failing page), its task's fetch_region and
    build_report, which gathered the task, are failed in both formats; no other call is."""
    events = chrome_events(report.trace_dir, "report-fail")
    slices = [e for e in events if e["ph"] == "X" and e["cat"] != "workflow"]
    failed = [e for e in slices if e["args"]["status"] == ERROR]
    assert sorted(e["name"] for e in failed) == ["build_report", "fetch_page", "fetch_region"]
    page, region = (
        next(e for e in failed if e["name"] == n) for n in ("fetch_page", "fetch_region")
    )
    assert page["tid"] == region["tid"]  # one task: the one that raised
    assert all("latam page" in e["args"]["error"] for e in failed)
    if sys.version_info >= (3, 12):
        assert f"page={report.failing_page}" in page["args"]["args"]
        assert "'latam'" in region["args"]["args"]
    assert workflow_slice(events)["args"]["status"] == ERROR
    request = json.loads(exported(report.trace_dir, "report-fail", "--format", "otlp"))
    spans = [s for r in request["resourceSpans"] for g in r["scopeSpans"] for s in g["spans"]]
    erred = [s for s in spans if s["status"].get("code") == 2]
    assert sorted(s["name"] for s in erred) == [
        "build_report",
        "fetch_page",
        "fetch_region",
        "report-fail",
    ]
    for span in erred:
        (event,) = [e for e in span["events"] if e["name"] == "exception"]
        said = {a["key"]: a["value"]["stringValue"] for a in event["attributes"]}
        assert said["exception.type"] == "UpstreamError"
        assert "in fetch_page" in said["exception.stacktrace"]
