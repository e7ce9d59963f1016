"""The pure renderers and the watch state: records in, text out; no terminal, no files."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from doeff_flow_core import LiveTrace, SlogLine, TraceFrame
from doeff_flow_core.escape import safe
from flowctl.render.box import chain_lines, dashboard, plain, status_counts, watch_box
from flowctl.render.history import (
    history_ending_json,
    history_ending_line,
    history_json_line,
    history_line,
    history_run_line,
)
from flowctl.render.text import change_line, ps_json, ps_line, ps_lines
from flowctl.render.textwidth import width
from flowctl.render.timefmt import age, clock
from flowctl.sources.base import UNREADABLE, FeedUpdate, WorkflowEntry
from flowctl.watch.state import TASK_FORGET_AFTER, WorkflowView, fold
from tests.support.flowctl import untimed

T0 = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
SEED_FRAMES = (
    TraceFrame("main_workflow", "/src/workflow.py", 100),
    TraceFrame("process_step", "/src/workflow.py", 45),
    TraceFrame("call_api", "/src/api.py", 23),
)
HOSTILE = "x\x1b[31mred\x1b]0;title\x07\r\n\x9b2J\u202eevil\u2066\ud800"
# What must never reach a terminal from a trace: C0 but newline, DEL, C1, bidi, surrogates.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def rec(step: int = 42, status: str = "running", **fields: object) -> LiveTrace:
    values: dict[str, object] = {
        "workflow_id": "wf-001",
        "step": step,
        "status": status,
        "current_effect": "CacheGet(key='api_result')" if status == "running" else None,
        "trace": SEED_FRAMES,
        "started_at": T0 - timedelta(seconds=10),
        "updated_at": T0,
        "run": "r1",
    }
    values.update(fields)
    return LiveTrace(**values)  # type: ignore[arg-type]


def box_text(view: WorkflowView, status: str | None, *, now: datetime = T0, **kw: object) -> str:
    return plain(watch_box(view, status, now, 60, location=".doeff-flow", **kw))  # type: ignore[arg-type]


def view_of(*records: LiveTrace) -> WorkflowView:
    return fold(WorkflowView("wf-001"), FeedUpdate(tuple(records)))


# -- the seed's shapes -----------------------------------------------------------------------


def test_history_lines_keep_the_seed_shape_with_time_and_outcome() -> None:
    at = clock(rec(1).updated_at)
    assert history_line(rec(1, current_effect="Get('k')"), 0.0413) == (
        f"step    1  running     {at}     41.3 ms  Get('k')"
    )
    assert history_line(rec(2), 0.0004).split()[4:6] == ["<1", "ms"]  # never "0 µs"
    assert untimed(history_line(rec(1, current_effect="Get('k')"))) == (
        "step    1  running     Get('k')"
    )
    completed = untimed(history_line(rec(42, "completed", result="30")))
    assert completed == "step   42  completed   result: 30"
    failed = rec(15, "failed", error="ValueError: boom")
    assert untimed(history_line(failed)) == "step   15  failed      error: ValueError: boom"
    assert history_line(rec(3, task=2)).endswith("CacheGet(key='api_result')  [task 2]")


def test_ps_lines_keep_the_seed_columns_then_age_and_slog() -> None:
    now = T0 + timedelta(seconds=3)
    running = WorkflowEntry(
        "wf-001", rec(42, last_slog=SlogLine("fetching", {"page": "3"})), "running"
    )
    done = WorkflowEntry("wf-002", rec(100, "completed"), "completed")
    failed = WorkflowEntry("wf-003", rec(15, "failed"), "failed")
    lines = ps_lines([running, done, failed], now)
    assert lines[0].startswith("wf-001    running     step 42")
    assert lines[1].startswith("wf-002    completed   step 100")
    assert lines[2].startswith("wf-003    failed      step 15")
    assert "3s ago" in lines[0] and lines[0].endswith("fetching page=3")


def test_ps_widens_the_id_column_for_long_ids_and_shows_problems() -> None:
    entries = [
        WorkflowEntry("a-very-long-workflow-id", rec(1), "running"),
        WorkflowEntry("wf-2", None, UNREADABLE, "no valid record in the trace"),
    ]
    lines = ps_lines(entries, T0)
    assert (
        lines[0].index("running") == lines[1].index(UNREADABLE) == len(entries[0].workflow_id) + 2
    )
    assert lines[1].endswith("no valid record in the trace")


def test_watch_box_draws_the_seed_tree() -> None:
    text = box_text(view_of(rec()), "running")
    lines = text.splitlines()
    assert lines[0].startswith("┌─ wf-001 [running] step 42 ─")
    body = [line[1:-1].rstrip() for line in lines[1:-1]]
    seed = [
        "  main_workflow         workflow.py:100",
        "    └─ process_step     workflow.py:45",
        "         └─ call_api    api.py:23",
        "              ↳ CacheGet(key='api_result')",
    ]
    start = body.index(seed[0])
    assert body[start : start + 4] == seed
    assert f"  Updated: {clock(T0)}" in body
    assert lines[-1].startswith("└") and lines[-1].endswith("┘")


def test_every_box_line_has_the_same_width_even_with_wide_text() -> None:
    record = rec(current_effect="Get('キー') " * 20, last_slog=SlogLine("進捗", {"段階": "二"}))
    lines = plain(watch_box(view_of(record), "running", T0, 70, location=".")).splitlines()
    assert {width(line) for line in lines} == {70}


def test_an_inexact_chain_is_marked() -> None:
    text = box_text(view_of(rec(trace_exact=False)), "running")
    assert "≈ main_workflow" in text and "approximate" in text
    assert "≈" not in box_text(view_of(rec()), "running")
    assert "≈ main_workflow" in change_line(
        rec(trace_exact=False), "running", T0, status_only=False, name="wf-001"
    )


def test_long_chains_are_elided_in_the_middle() -> None:
    frames = tuple(TraceFrame(f"f{i}", "/w.py", i) for i in range(20))
    lines = plain(chain_lines(rec(trace=frames))).splitlines()
    assert "f0" in lines[0] and "f1 " in lines[1] and "┄ 13 more frames" in lines[2]
    assert "f19" in lines[-2] and lines[-1].strip().startswith("↳")


def test_spawned_tasks_get_their_own_sub_trees_and_effect_age() -> None:
    root = rec(10, current_effect="Gather(tasks=(Task(0), Task(1)))", updated_at=T0)
    a = rec(
        11, task=0, trace=(TraceFrame("worker", "/w.py", 5),), updated_at=T0 + timedelta(seconds=1)
    )
    b = rec(
        12, task=1, trace=(TraceFrame("worker", "/w.py", 6),), updated_at=T0 + timedelta(seconds=9)
    )
    text = box_text(view_of(root, a, b), "running", now=T0 + timedelta(seconds=9))
    assert "Gather(tasks=(Task(0), Task(1)))" in text
    # each task says how long it has been in its effect, the longest idle first
    assert text.index("task 0") < text.index("w.py:5") < text.index("· 8.0s") < text.index("task 1")
    assert text.index("task 1") < text.index("w.py:6") < text.index("· 0.0s")


def test_idle_time_shows_for_a_running_workflow_only() -> None:
    later = T0 + timedelta(minutes=5)
    assert "idle 5m00s" in box_text(view_of(rec()), "running", now=later)
    assert "idle" not in box_text(view_of(rec()), "running", now=T0 + timedelta(seconds=1))
    assert "idle" not in box_text(view_of(rec(43, "completed")), "completed", now=later)


def test_lost_failed_completed_and_waiting_boxes() -> None:
    lost = box_text(view_of(rec(pid=4242)), "lost", now=T0 + timedelta(minutes=2))
    assert "[lost]" in lost and "writer pid 4242 is gone" in lost and "no update for 2m00s" in lost
    failed = rec(16, "failed", error="ValueError: boom", trace=(TraceFrame("bad", "/w.py", 27),))
    text = box_text(view_of(failed), "failed")
    assert "error: ValueError: boom" in text and "raised at:" in text and "w.py:27" in text
    assert "result: 30" in box_text(view_of(rec(43, "completed", result="30")), "completed")
    waiting = box_text(WorkflowView("wf-9"), None)
    assert "[waiting]" in waiting and "waiting for wf-9 to start" in waiting


def test_status_only_box_has_no_chain() -> None:
    text = box_text(view_of(rec()), "running", status_only=True)
    assert "[running] step 42" in text and "main_workflow" not in text and "Updated:" in text


def test_dashboard_lists_every_workflow_with_its_chain_result_or_error() -> None:
    entries = [
        WorkflowEntry("wf-done", rec(9, "completed", result="30"), "completed"),
        WorkflowEntry("wf-run", rec(4), "running"),
        WorkflowEntry("wf-bad", rec(5, "failed", error="KeyError: 'x'"), "failed"),
    ]
    text = plain(dashboard(entries, T0, 100, source="files .doeff-flow"))
    assert "1 running · 1 failed · 1 completed" in text.splitlines()[0]
    assert "main_workflow › process_step › call_api  ↳ CacheGet(key='api_result')" in text
    assert "result: 30" in text and "error: KeyError: 'x'" in text
    assert text.index("wf-run") < text.index("wf-bad") < text.index("wf-done")
    assert "no workflows yet" in plain(dashboard([], T0, 80, source="files x"))


def test_status_counts() -> None:
    assert status_counts(["completed", "running", "running"]) == "2 running · 1 completed"
    assert status_counts([]) == "no workflows"


# -- untrusted text ---------------------------------------------------------------------------


def test_safe_escapes_terminal_controls() -> None:
    assert safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe("\r\n\t") == "\\r\\n\\t"
    assert safe("\x9b\u202e\u2066") == "\\x9b\\u202e\\u2066"
    assert safe("Get('キー') ✓") == "Get('キー') ✓"


def hostile_record(text: str) -> LiveTrace:
    return rec(
        current_effect=text,
        error=text,
        result=text,
        last_slog=SlogLine(text, {text: text}),
        trace=(TraceFrame(text, text, 1),),
        host=text,
        run=text,
    )


def all_renderings(record: LiveTrace) -> list[str]:
    entry = WorkflowEntry("wf-001", record, "running")
    out = [ps_line(entry, T0), history_line(record), history_line(replace(record, status="failed"))]
    out += [history_ending_line(record, "lost"), history_ending_line(record, "unknown")]
    out.append(history_run_line(record))
    for status in ("running", "completed", "failed", "lost", "unknown"):
        out.append(change_line(record, status, T0, status_only=False, name=record.workflow_id))
        out.append(box_text(view_of(record), status))
    out.append(plain(dashboard([entry], T0, 200, source=HOSTILE)))
    return out


def test_hostile_text_is_shown_escaped_everywhere() -> None:
    for text in all_renderings(hostile_record(HOSTILE)):
        assert not UNSAFE.search(text), text
    assert "\\x1b[31mred" in history_line(rec(current_effect=HOSTILE))


@given(st.text(max_size=40))
def test_no_trace_text_reaches_the_terminal_unescaped(text: str) -> None:
    for rendered in all_renderings(hostile_record(text)):
        assert not UNSAFE.search(rendered)


def test_json_output_is_exact_and_ascii() -> None:
    record = hostile_record(HOSTILE)
    line = history_json_line(record)
    assert line.isascii() and "\n" not in line
    assert json.loads(line) == record.to_dict()
    derived = json.loads(history_ending_json(record, "unknown"))
    assert derived["derived"] is True and derived["host"] == record.host
    entries = [
        WorkflowEntry("wf-001", record, "lost"),
        WorkflowEntry("wf-2", None, UNREADABLE, "x"),
    ]
    data = json.loads(ps_json(entries, T0 + timedelta(seconds=2)))
    assert data[0]["status"] == "lost" and data[0]["written_status"] == "running"
    assert data[0]["current_effect"] == HOSTILE and data[0]["age_seconds"] == 2.0
    assert data[1] == {
        "workflow_id": "wf-2",
        "status": UNREADABLE,
        "step": None,
        "updated_at": None,
        "problem": "x",
    }


def test_ages() -> None:
    assert [age(s) for s in (0, 59, 60, 125, 3600 * 3 + 240, 86400 * 2 + 3600 * 3)] == [
        "0s",
        "59s",
        "1m00s",
        "2m05s",
        "3h04m",
        "2d03h",
    ]


# -- the watch state --------------------------------------------------------------------------


def test_fold_keeps_the_latest_record_per_task_of_the_current_run() -> None:
    view = view_of(rec(1), rec(2, task=0), rec(3, task=1), rec(4, task=0))
    assert view.root is not None and view.root.step == 1
    assert [(r.task, r.step) for r in view.tasks] == [(0, 4), (1, 3)]
    assert view.latest is not None and view.latest.step == 4
    rerun = fold(view, FeedUpdate((rec(1, run="r2"),)))
    assert rerun.tasks == () and rerun.run == "r2"
    done = fold(view, FeedUpdate((rec(5, "completed"),)))
    assert done.tasks == () and done.finished


def test_fold_drops_tasks_the_trace_says_finished() -> None:
    view = view_of(rec(1), rec(2, task=0), rec(3, task=1))
    assert [r.task for r in view.tasks] == [0, 1]
    later = fold(view, FeedUpdate((rec(4, task=1, finished_tasks=((0, T0),)),)))
    assert [(r.task, r.step) for r in later.tasks] == [(1, 4)]
    assert later.root is not None and later.root.step == 1


def test_fold_forgets_quiet_tasks_only_in_traces_without_task_events() -> None:
    old = rec(2, task=99, updated_at=T0)
    fresh = [
        rec(10 + i, task=i, updated_at=T0 + timedelta(seconds=TASK_FORGET_AFTER + 1))
        for i in range(10)
    ]
    view = view_of(old, *fresh)
    assert {r.task for r in view.tasks} == set(range(10))  # every live task, however many
    spawned = view_of(replace(old, spawned=((99, None),)), *fresh)
    assert next(r.task for r in spawned.tasks) == 99  # kept, and first: the longest idle


def test_fold_returns_the_same_view_when_nothing_changed_and_resets() -> None:
    view = view_of(rec(1))
    assert fold(view, FeedUpdate()) is view
    gone = fold(view, FeedUpdate(present=False, reset=True))
    assert gone.latest is None and not gone.present
    assert fold(view, FeedUpdate(reset=True)).latest is None
