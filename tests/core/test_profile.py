"""Profiles from spans: a real run of examples/report.py (regions fetched page by page in
spawned tasks) added up per function and per call site, and hand-built spans whose own
times are known exactly (nesting, spawned tasks, several runs, memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from doeff_flow_core import NoRun, Profile, profile_of, profiles_of, spans_of
from doeff_flow_core.timeline.profile import CALLSITE, Entry, Profiler
from doeff_flow_core.timeline.spans import OK, WORKFLOW, Span
from doeff_flow_core.tracefiles.reading import RecordStream
from tests.support.procs import PROJECT_ROOT, run_command
from tests.support.spans import span

REPORT = PROJECT_ROOT / "examples" / "report.py"


def line_of(marker: str) -> int:
    """The line of examples/report.py that holds ``marker``."""
    lines = REPORT.read_text().splitlines()
    return next(number for number, text in enumerate(lines, 1) if marker in text)


@pytest.fixture(scope="module")
def report_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of examples/report.py (no failure), traced by this Python's tracer."""
    base = tmp_path_factory.mktemp("profile")
    done = run_command(
        [sys.executable, str(REPORT), "--trace-dir", str(base / "traces")],
        env={"XDG_STATE_HOME": str(base / "state")},
    )
    assert done.returncode == 0, done.stderr
    return base / "traces" / "report" / "trace.jsonl"


def by_name(profile: Profile) -> dict[str, Entry]:
    return {entry.name: entry for entry in profile.entries}


def test_a_real_run_counts_each_call_of_a_loop(report_trace: Path) -> None:
    profile = profile_of(spans_of(RecordStream(report_trace)))
    entries = by_name(profile)
    assert profile.workflow_id == "report" and profile.status == OK
    assert entries["fetch_page"].calls == 12  # 3 regions x 4 pages, one call each
    assert entries["fetch_region"].calls == 3
    assert entries["build_report"].calls == 1 and entries["summarize"].calls == 1
    assert entries["report"].kind == WORKFLOW and entries["report"].calls == 1
    assert profile.calls == 12 + 3 + 1 + 1
    assert profile.tasks == 4  # the root task and one per region


def test_own_time_is_at_most_total_and_rows_go_by_own_time(report_trace: Path) -> None:
    profile = profile_of(spans_of(RecordStream(report_trace)))
    for entry in profile.entries:
        assert 0 <= entry.own <= entry.total + 1e-9, entry
        assert entry.longest <= entry.total + 1e-9 and entry.mean <= entry.longest + 1e-9
    owns = [entry.own for entry in profile.entries]
    assert owns == sorted(owns, reverse=True)
    assert profile.entries[0].name == "fetch_page"  # the network is where the time went
    assert profile.summed == pytest.approx(sum(owns))
    assert sum(profile.own_share(entry) for entry in profile.entries) == pytest.approx(1.0)


def test_awaits_dominate_fetch_page(report_trace: Path) -> None:
    fetch_page = by_name(profile_of(spans_of(RecordStream(report_trace))))["fetch_page"]
    waits = dict(fetch_page.waits)
    assert set(waits) == {"Await", "Ask"}
    assert waits["Await"] > 0.9 * fetch_page.own  # several ms asleep per page
    assert waits["Await"] > 10 * waits["Ask"]
    assert fetch_page.waits[0][0] == "Await"  # most first


def test_spawned_tasks_count_for_their_own_functions(report_trace: Path) -> None:
    profile = profile_of(spans_of(RecordStream(report_trace)))
    entries = by_name(profile)
    build, summarize = entries["build_report"], entries["summarize"]
    fetch_region, fetch_page = entries["fetch_region"], entries["fetch_page"]
    # build_report's own time is its time less summarize's, its one call in its own task:
    # the regions it spawned are not taken off (it waited for them, in Gather).
    assert build.own == pytest.approx(build.total - summarize.total, abs=1e-6)
    assert dict(build.waits)["Gather"] > 0.5 * build.own
    # The regions' time is theirs: fetch_region's own time is what fetch_page did not take.
    assert fetch_region.own == pytest.approx(fetch_region.total - fetch_page.total, abs=1e-6)
    # Three regions at once: the summed time exceeds the wall time, counted once.
    assert profile.summed > profile.wall
    assert fetch_region.total > profile.wall
    workflow = entries["report"]
    assert workflow.total == pytest.approx(profile.wall)
    assert workflow.own == pytest.approx(profile.wall - build.total, abs=1e-6)


def test_by_call_site_names_where_each_call_was_made(report_trace: Path) -> None:
    profile = profile_of(spans_of(RecordStream(report_trace)), by=CALLSITE)
    assert profile.by == CALLSITE
    sites = {entry.name: (entry.site_file, entry.site_line) for entry in profile.entries}
    assert sites["fetch_page"] == (str(REPORT), line_of("rows += yield fetch_page"))
    assert sites["summarize"] == (str(REPORT), line_of("return (yield summarize"))
    # A task's outermost call: where the task was spawned.
    assert sites["fetch_region"] == (str(REPORT), line_of("yield Spawn(fetch_region"))
    assert sites["build_report"] == (None, None)  # the run's outermost call
    same = profile_of(spans_of(RecordStream(report_trace)))
    assert profile.summed == pytest.approx(same.summed)


# -- hand-built spans ---------------------------------------------------------------------


def spawning_run(run: str = "r1") -> list[Span]:
    """main (0-10) calls plan (1-3) and spawns a task at 3 whose work (3-9) calls leaf
    (4-6), then waits; spans in the order they end, children first."""
    return [
        span(3, 2, "leaf", 1.5, 2.5, depth=2, run=run, waits=(("Get", 0.5),)),
        span(2, 1, "plan", 1, 3, run=run, site=("/w/flow.py", 5)),
        span(5, 4, "leaf", 4, 6, task=7, depth=2, run=run, waits=(("Get", 1.5), ("Ask", 0.5))),
        span(4, 2, "work", 3, 9, task=7, spawned_by=2, run=run),
        span(6, 1, "report", 9, 9.5, run=run),
        span(1, None, "", 0, 10, run=run),
    ]


def test_own_time_takes_off_calls_in_the_same_task_only() -> None:
    profile = profile_of(spawning_run())
    entries = {entry.name: entry for entry in profile.entries}
    assert entries["leaf"].calls == 2 and entries["leaf"].total == pytest.approx(3.0)
    assert entries["leaf"].own == pytest.approx(3.0) and entries["leaf"].longest == 2.0
    assert entries["plan"].own == pytest.approx(1.0)  # 2 s less leaf's 1 s; work is a task
    assert entries["work"].own == pytest.approx(4.0)  # 6 s less leaf's 2 s
    assert entries["report"].own == pytest.approx(0.5)
    assert entries["wf"].own == pytest.approx(10 - 2 - 0.5)  # the task is not the root's
    assert profile.summed == pytest.approx(3 + 1 + 4 + 0.5 + 7.5)
    assert profile.wall == 10 and profile.tasks == 2 and profile.calls == 5
    assert dict(entries["leaf"].waits) == {"Get": 2.0, "Ask": 0.5}
    assert [entry.name for entry in profile.entries] == ["wf", "work", "leaf", "plan", "report"]


def test_every_run_gets_its_profile_and_profile_of_takes_the_last() -> None:
    spans = [*spawning_run("r1"), *spawning_run("r2")[:-1], span(1, None, "", 20, 30, run="r2")]
    runs = list(profiles_of(spans))
    assert [profile.run for profile in runs] == ["r1", "r2"]
    assert runs[0].calls == runs[1].calls == 5  # nothing of the first run left over
    assert profile_of(spans).run == "r2" and profile_of(spans).start == 20


def test_no_run_is_an_error_of_its_own() -> None:
    with pytest.raises(NoRun):
        profile_of([])
    with pytest.raises(ValueError, match="by must be one of"):
        Profiler("module")  # type: ignore[arg-type]


def test_memory_is_bounded_by_open_calls_and_functions() -> None:
    """A long run of short calls: what the profiler keeps does not grow with them."""
    profiler = Profiler()
    span_id = 2
    for index in range(20_000):
        child = span(span_id + 1, span_id, f"f{index % 7}", index, index + 0.5, depth=2)
        parent = span(span_id, 1, "batch", index, index + 1)
        assert profiler.add(child) is None and profiler.add(parent) is None
        span_id += 2
    assert len(profiler._sums) == 8  # seven functions and batch
    assert len(profiler._own._inner) == 1  # the workflow span's children's time
    profile = profiler.add(span(1, None, "", 0, 20_000))
    assert profile is not None and profile.calls == 40_000
    assert profile.summed == pytest.approx(20_000)
