"""Flame graphs from ``flowctl export``, over real runs of examples/report.py: folded stacks
(adding up to what ``flowctl profile`` sums) and speedscope files (checked against
speedscope's published schema, vendored in tests/support/speedscope); escaped names; memory
of folded stacks and profiles on long traces."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from flowctl.export.folded import RECENT_CALLS, Folder, frame_name, last_run_stacks
from tests.flowctl.test_export import write_long_traces
from tests.support.flowctl import flowctl
from tests.support.procs import PROJECT_ROOT, python_command, python_env, run_command
from tests.support.spans import span as call
from tests.support.traces import put_trace, read_jsonl, record_line

REPORT = PROJECT_ROOT / "examples" / "report.py"
SCHEMA = PROJECT_ROOT / "tests" / "support" / "speedscope" / "file-format-schema.json"
FOLDED_LINE = re.compile(r"^[^;\s]+(;[^;\s]+)* \d+$")


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report (one run), report-fail (a page fails), report-twice (two runs)."""
    base = tmp_path_factory.mktemp("flame")
    trace_dir = base / "traces"
    env = {"XDG_STATE_HOME": str(base / "state")}
    for workflow_id, args in (
        ("report", ()),
        ("report-fail", ("--fail",)),
        ("report-twice", ()),
        ("report-twice", ("--fail",)),
    ):
        command = [sys.executable, str(REPORT), "--trace-dir", str(trace_dir)]
        done = run_command([*command, "--workflow-id", workflow_id, *args], env=env)
        assert done.returncode == 0, done.stderr
    return trace_dir


def exported(traces: Path, *args: object) -> str:
    done = flowctl("--trace-dir", traces, "export", *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def folded(traces: Path, workflow_id: str) -> dict[str, int]:
    text = exported(traces, workflow_id, "--format", "folded")
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        assert FOLDED_LINE.match(line), line
        stack, count = line.rsplit(" ", 1)
        assert stack not in stacks  # one line per distinct stack
        stacks[stack] = int(count)
    return stacks


def profiled(traces: Path, workflow_id: str) -> dict[str, Any]:
    done = flowctl("--trace-dir", traces, "profile", workflow_id, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


# -- folded stacks -----------------------------------------------------------------------------


def test_folded_stacks_hang_tasks_under_their_spawner(traces: Path) -> None:
    stacks = folded(traces, "report")
    assert set(stacks) >= {
        "report",
        "report;build_report",
        "report;build_report;fetch_region;fetch_page",
        "report;build_report;summarize",
    }
    assert all(stack.startswith("report") for stack in stacks)
    entries = {entry["function"]: entry for entry in profiled(traces, "report")["entries"]}
    # fetch_page has one stack, so its line is its own time, in microseconds.
    page = stacks["report;build_report;fetch_region;fetch_page"]
    assert abs(page - entries["fetch_page"]["own_seconds"] * 1e6) <= 1
    assert page > 12 * 4_000  # twelve pages of at least 5 ms


@pytest.mark.parametrize("workflow_id", ["report", "report-fail", "report-twice"])
def test_folded_adds_up_to_the_profiles_summed_time(traces: Path, workflow_id: str) -> None:
    stacks = folded(traces, workflow_id)
    summed = profiled(traces, workflow_id)["summed_seconds"] * 1e6
    assert abs(sum(stacks.values()) - summed) <= len(stacks) + 1  # 1 µs per line


def test_folded_holds_the_last_run(traces: Path) -> None:
    # report-twice's last run failed: latam's page 2 raised, so no summarize.
    stacks = folded(traces, "report-twice")
    assert not any(stack.endswith("summarize") for stack in stacks)
    assert "report-twice;build_report;fetch_region;fetch_page" in stacks


def test_folded_names_hold_no_separator(tmp_path: Path) -> None:
    name = "a;b c\nd%e\x1b[2J\u202e"
    assert frame_name(name) == "a%3Bb%20c%0Ad%25e%1B[2J%u202E"
    frames = [{"function": name, "file": "/w/x.py", "line": 1, "code": None}]
    text = record_line("wf-odd", 1, trace=frames) + record_line(
        "wf-odd", 2, status="completed", trace=[], updated_at="2026-01-01T12:00:03+00:00"
    )
    put_trace(tmp_path, "wf-odd", text)
    assert folded(tmp_path, "wf-odd") == {
        "wf-odd;a%3Bb%20c%0Ad%25e%1B[2J%u202E": 2_000_000,
        "wf-odd": 1_000_000,  # from the run's start to its first record
    }


# -- speedscope ------------------------------------------------------------------------------


def speedscope(traces: Path, workflow_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(exported(traces, workflow_id, "--format", "speedscope"))
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    return document


def own_times(profile: dict[str, Any], frames: int) -> tuple[Counter[int], int]:
    """Replay a profile's events: each frame's own microseconds (nesting and order
    checked on the way, as speedscope's importer checks them), and the opens."""
    own: Counter[int] = Counter()
    stack: list[int] = []
    last = profile["startValue"]
    opened = 0
    for event in profile["events"]:
        assert event["at"] >= last, event  # in time order
        assert 0 <= event["frame"] < frames
        if stack:
            own[stack[-1]] += event["at"] - last
        last = event["at"]
        if event["type"] == "O":
            stack.append(event["frame"])
            opened += 1
        else:
            assert stack and stack.pop() == event["frame"], event  # properly nested
    assert not stack and last <= profile["endValue"]
    return own, opened


def test_speedscope_is_valid_with_an_evented_profile_per_task(traces: Path) -> None:
    document = speedscope(traces, "report")
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = document["shared"]["frames"]
    names = [frame["name"] for frame in frames]
    assert sorted(names) == sorted(
        ["report", "build_report", "fetch_region", "fetch_page", "summarize"]
    )
    page = frames[names.index("fetch_page")]
    ask = next(n for n, text in enumerate(REPORT.read_text().splitlines(), 1) if "Ask(" in text)
    assert page["file"] == str(REPORT) and page["line"] == ask
    run = read_jsonl(traces / "report" / "trace.jsonl")[0]["run"]
    profiles = document["profiles"]
    labels = [profile["name"] for profile in profiles]
    assert labels[0] == f"report run {run} · root"
    assert len(profiles) == 4 and all(
        label.startswith(f"report run {run} · task ") for label in labels[1:]
    )
    pages = 0
    for profile in profiles:
        assert profile["type"] == "evented" and profile["unit"] == "microseconds"
        _, opened = own_times(profile, len(frames))
        pages += sum(
            1 for e in profile["events"] if e["type"] == "O" and names[e["frame"]] == "fetch_page"
        )
        assert opened
    assert pages == 12


@pytest.mark.parametrize("workflow_id", ["report", "report-fail"])
def test_speedscope_own_times_add_up_as_the_profile_does(traces: Path, workflow_id: str) -> None:
    document = speedscope(traces, workflow_id)
    names = [frame["name"] for frame in document["shared"]["frames"]]
    own: Counter[str] = Counter()
    events = 0
    for profile in document["profiles"]:
        frame_own, _ = own_times(profile, len(names))
        events += len(profile["events"])
        for frame, micros in frame_own.items():
            own[names[frame]] += micros
    expected = {
        entry["function"]: entry["own_seconds"] * 1e6
        for entry in profiled(traces, workflow_id)["entries"]
    }
    assert set(own) <= set(expected)
    for name, micros in expected.items():
        assert abs(own[name] - micros) <= events, name


def test_speedscope_holds_every_run(traces: Path) -> None:
    document = speedscope(traces, "report-twice")
    runs = list(
        dict.fromkeys(r["run"] for r in read_jsonl(traces / "report-twice" / "trace.jsonl"))
    )
    roots = [p["name"] for p in document["profiles"] if p["name"].endswith("· root")]
    assert roots == [f"report-twice run {run} · root" for run in runs]


def test_the_vendored_schema_refuses_what_speedscope_refuses() -> None:
    schema = json.loads(SCHEMA.read_text())
    bad = {"$schema": "https://www.speedscope.app/file-format-schema.json", "profiles": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)  # no shared frames
    assert (SCHEMA.parent / "LICENSE").read_text().startswith("MIT License")


# -- memory ------------------------------------------------------------------------------------


def peak_rss_kib(trace_dir: Path, *command: str) -> int:
    code = f"""
        import resource, sys
        from flowctl.cli import main
        code = main(["--trace-dir", {str(trace_dir)!r}, *{list(command)!r}])
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
        sys.exit(code)
    """
    done = subprocess.run(
        python_command(code), env=python_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.split()[-1])


@pytest.fixture(scope="module")
def long_traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_long_traces(tmp_path_factory.mktemp("long-flame"))


@pytest.mark.parametrize(
    "command",
    [("export", "wf-long", "--format", "folded", "-o", "/dev/null"), ("profile", "wf-long")],
)
def test_memory_does_not_grow_with_the_trace(
    long_traces: tuple[Path, Path], command: tuple[str, ...]
) -> None:
    """Four times the records (40,000 more calls) in about the same memory."""
    short, long = long_traces
    assert peak_rss_kib(long, *command) < peak_rss_kib(short, *command) + 8 * 1024


def test_a_folded_suffix_means_folded(traces: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.folded"
    done = flowctl("--trace-dir", traces, "export", "report", "-o", target)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    assert target.read_text() == exported(traces, "report", "--format", "folded")


# -- folded stacks from hand-built spans ---------------------------------------------------------


def test_a_task_that_outlives_its_spawner_hangs_under_it() -> None:
    """main (0-10) calls launch (1-2), which spawns a task (2-8: work, calling leaf 3-5)
    and returns before the task's calls end; then the workflow ends."""
    spans = [
        call(3, 2, "launch", 1, 2, depth=2),
        call(5, 4, "leaf", 3, 5, task=1, depth=2),
        call(4, 3, "work", 2, 8, task=1, spawned_by=3),
        call(2, 1, "main", 0.5, 10),
        call(1, None, "wf", 0, 10),
    ]
    stacks, count, runs = last_run_stacks(spans)
    assert (count, runs) == (5, 1) and stacks is not None
    assert {";".join(path): round(seconds, 6) for path, seconds in stacks.items()} == {
        "wf": 0.5,
        "wf;main": 8.5,  # 9.5 s less launch's 1 s; the task is not main's
        "wf;main;launch": 1.0,
        "wf;main;launch;work": 4.0,
        "wf;main;launch;work;leaf": 2.0,
    }


def test_a_task_whose_spawner_is_forgotten_hangs_under_the_workflow() -> None:
    folder = Folder()
    spans = [call(2, 1, "launch", 0, 1)]
    # More calls end than are remembered before the task's call arrives.
    spans += [call(10 + i, 1, "busy", 1, 1) for i in range(RECENT_CALLS)]
    spans += [call(9, 2, "work", 1, 4, task=1, spawned_by=2), call(1, None, "wf", 0, 5)]
    results = [folder.add(span) for span in spans]
    stacks = results[-1]
    assert stacks is not None and all(result is None for result in results[:-1])
    assert stacks[("wf", "work")] == 3.0  # not lost: its time is still counted
    assert sum(stacks.values()) == pytest.approx(1 + 3 + 4)  # wf 4 s own: 5 less launch
