"""``flowctl profile`` as a process, over real runs of examples/report.py: the table, --by
callsite, --top, --json, --run among several runs, and the errors of unknown workflows and
runs; hostile names stay text; memory stays flat on long traces."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from flowctl import exitcodes
from tests.support.flowctl import assert_one_error_line, flowctl
from tests.support.flowd import flowd
from tests.support.procs import PROJECT_ROOT, python_command, run_command
from tests.support.traces import put_trace, read_jsonl, record_line

REPORT = PROJECT_ROOT / "examples" / "report.py"
NUMBERS = ("share", "own", "total", "calls", "mean", "max")


def line_of(marker: str) -> int:
    """The line of examples/report.py that holds ``marker``."""
    lines = REPORT.read_text().splitlines()
    return next(number for number, text in enumerate(lines, 1) if marker in text)


FETCH_PAGE = f"fetch_page (report.py:{line_of('yield Ask(')})"


def run_report(trace_dir: Path, workflow_id: str, *args: str, env: dict[str, str]) -> None:
    command = [sys.executable, str(REPORT), "--trace-dir", str(trace_dir)]
    done = run_command([*command, "--workflow-id", workflow_id, *args], env=env)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report (one run), report-fail (a page fails), report-twice (two runs)."""
    base = tmp_path_factory.mktemp("profile")
    trace_dir = base / "traces"
    env = {"XDG_STATE_HOME": str(base / "state")}
    run_report(trace_dir, "report", env=env)
    run_report(trace_dir, "report-fail", "--fail", env=env)
    run_report(trace_dir, "report-twice", env=env)
    run_report(trace_dir, "report-twice", "--fail", env=env)
    return trace_dir


def profile(traces: Path, *args: object, columns: int = 200) -> str:
    done = flowctl("--trace-dir", traces, "profile", *args, env={"COLUMNS": str(columns)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def rows(text: str) -> list[dict[str, str]]:
    """The table's rows, cut where its header's columns start."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("own%"))
    header = lines[at]
    waits = header.index("waits")
    label = max(header.index(title) for title in ("function (", "call site") if title in header)
    waits = waits if waits < label else label
    found = []
    for line in lines[at + 1 :]:
        if not line.startswith(" ") or "%" not in line[:6]:
            break
        cells = line[:waits].split()
        # A row with failed calls says how many beside its calls: "8 ✗1".
        failed = next((cells.pop(i)[1:] for i, c in enumerate(cells) if c.startswith("✗")), "0")
        row = dict(zip(NUMBERS, cells, strict=True))
        row["failed"] = failed
        row["share"] = row["share"].rstrip("%")
        row["waits"] = line[waits:label].strip()
        row["label"] = line[label:]
        found.append(row)
    return found


def as_json(traces: Path, *args: object) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(profile(traces, *args, "--json"))
    return document


def runs_of(traces: Path, workflow_id: str) -> list[str]:
    records = read_jsonl(traces / workflow_id / "trace.jsonl")
    return list(dict.fromkeys(record["run"] for record in records))


def test_the_table_shows_where_the_time_went(traces: Path) -> None:
    text = profile(traces, "report")
    lines = text.splitlines()
    run = runs_of(traces, "report")[0]
    assert re.match(
        rf"^report  run {run}  completed  wall \S+  summed \S+ over 4 tasks, 17 calls$", lines[0]
    )
    assert "tasks running at once each count their own time" in text
    table = rows(text)
    labels = [row["label"] for row in table]
    assert labels[0] == FETCH_PAGE
    assert "(workflow report)" in labels
    assert any(label.startswith("build_report (report.py:") for label in labels)
    fetch_page = table[0]
    assert fetch_page["calls"] == "12"
    assert fetch_page["waits"].startswith("Await ")
    shares = [float(row["share"]) for row in table]
    assert shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))


def test_a_failed_run_is_profiled_to_its_failure(traces: Path) -> None:
    text = profile(traces, "report-fail")
    assert re.match(r"^report-fail  run \S+  failed  ", text)
    table = rows(text)
    calls = {row["label"].split()[0]: int(row["calls"]) for row in table}
    assert calls["fetch_page"] < 12  # a page raised: the pages after it never ran
    assert "summarize" not in calls  # the report was never summed up
    # Which call raised, in which task, and which functions failed with it.
    (said,) = [line for line in text.splitlines() if line.startswith("error: ")]
    assert said.startswith("error: UpstreamError: latam page ")
    call = r"fetch_page(\(region='latam', page=\d, fail=True\))?"
    assert re.search(rf" · raised in {call} in task \d+$", said)
    if sys.version_info >= (3, 12):  # arguments are recorded by the exact tracer
        assert "fetch_page(region='latam'" in said
    failed = {row["label"].split()[0]: int(row["failed"]) for row in table}
    assert failed == {"fetch_page": 1, "fetch_region": 1, "build_report": 1, "(workflow": 0}
    document = as_json(traces, "report-fail")
    assert document["error"].startswith("UpstreamError: latam page ")
    assert document["raised"]["function"] == "fetch_page"
    assert document["raised"]["task"] is not None  # a spawned task, not the root
    by_function = {entry["function"]: entry["failed"] for entry in document["entries"]}
    assert by_function["fetch_page"] == 1 and by_function["report-fail"] == 0


def test_by_call_site(traces: Path) -> None:
    text = profile(traces, "report", "--by", "callsite")
    labels = [row["label"] for row in rows(text)]
    assert f"report.py:{line_of('rows += yield fetch_page')} → fetch_page" in labels
    spawn = line_of("yield Spawn(fetch_region")
    assert f"report.py:{spawn} → fetch_region" in labels  # where the task was spawned
    assert "(no caller) → build_report" in labels
    assert "call site → function" in text


def test_top_shows_the_first_rows_and_says_how_many_more(traces: Path) -> None:
    everything = rows(profile(traces, "report"))
    text = profile(traces, "report", "--top", "2")
    assert rows(text) == everything[:2]
    more = f"({len(everything) - 2} more; --top {len(everything)} shows them all)"
    assert text.splitlines()[-1] == more


def test_the_table_fits_the_terminal(traces: Path) -> None:
    for columns in (60, 80, 100):
        text = profile(traces, "report", columns=columns)
        assert max(len(line) for line in text.splitlines()) <= columns
        assert "fetch_pa" in text
    assert "waits" not in profile(traces, "report", columns=60)  # no room: it goes first
    assert "Await" in profile(traces, "report", columns=100)


def test_json_is_one_object(traces: Path) -> None:
    document = as_json(traces, "report")
    assert document["workflow_id"] == "report" and document["status"] == "ok"
    assert document["run"] == runs_of(traces, "report")[0]
    assert document["by"] == "function" and document["tasks"] == 4
    assert document["summed_seconds"] > document["wall_seconds"] > 0
    entries = {entry["function"]: entry for entry in document["entries"]}
    page = entries["fetch_page"]
    assert page["calls"] == 12 and page["file"] == str(REPORT)
    assert page["line"] == line_of("yield Ask(")
    assert page["own_seconds"] <= page["total_seconds"]
    assert max(page["waits"], key=page["waits"].get) == "Await"
    assert entries["report"]["kind"] == "workflow"
    assert sum(entry["own_seconds"] for entry in document["entries"]) == pytest.approx(
        document["summed_seconds"]
    )
    assert document["more_entries"] == 0
    top = as_json(traces, "report", "--top", "1", "--by", "callsite")
    assert len(top["entries"]) == 1 and top["more_entries"] == len(document["entries"]) - 1
    site = {"file": str(REPORT), "line": line_of("rows += yield fetch_page")}
    assert top["entries"][0]["site"] == site


def test_the_latest_run_by_default_and_any_run_by_prefix(traces: Path) -> None:
    first, second = runs_of(traces, "report-twice")
    assert as_json(traces, "report-twice")["run"] == second
    assert as_json(traces, "report-twice")["status"] == "error"
    older = as_json(traces, "report-twice", "--run", first[:6])
    assert older["run"] == first and older["status"] == "ok"
    calls = {entry["function"]: entry["calls"] for entry in older["entries"]}
    assert calls["fetch_page"] == 12  # that run's calls only


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("wf-nope",), exitcodes.NOT_FOUND, "no workflow 'wf-nope'"),
        (("../../etc",), exitcodes.USAGE, ""),
        (("report", "--run", "zzz"), exitcodes.NOT_FOUND, "report has no run 'zzz'; its runs: "),
        (("report", "--by", "module"), exitcodes.USAGE, "invalid choice: 'module'"),
        (("report", "--top", "0"), exitcodes.USAGE, "must be at least 1"),
    ],
)
def test_errors_are_one_line(traces: Path, args: tuple[str, ...], code: int, text: str) -> None:
    done = flowctl("--trace-dir", traces, "profile", *args)
    assert_one_error_line(done, code, text)
    assert done.stdout == ""


def test_an_ambiguous_run_prefix_names_the_runs(tmp_path: Path) -> None:
    lines = [
        record_line("wf-two", 1, run="abc-1"),
        record_line("wf-two", 2, run="abc-1", status="completed", trace=[]),
        record_line("wf-two", 1, run="abc-2"),
        record_line("wf-two", 2, run="abc-2", status="completed", trace=[]),
    ]
    put_trace(tmp_path, "wf-two", "".join(lines))
    done = flowctl("--trace-dir", tmp_path, "profile", "wf-two", "--run", "abc")
    assert_one_error_line(done, exitcodes.USAGE, "'abc' names more than one run of wf-two")
    assert "abc-1, abc-2" in done.stderr
    assert json.loads(profile(tmp_path, "wf-two", "--run", "abc-1", "--json"))["run"] == "abc-1"


def test_an_empty_trace_and_a_damaged_one(tmp_path: Path) -> None:
    put_trace(tmp_path, "wf-empty", "")
    done = flowctl("--trace-dir", tmp_path, "profile", "wf-empty")
    assert_one_error_line(done, exitcodes.NOT_FOUND, "wf-empty has no run to profile yet")
    put_trace(tmp_path, "wf-corrupt", b"\x00\xffnot json\n{]\n")
    done = flowctl("--trace-dir", tmp_path, "profile", "wf-corrupt")
    assert_one_error_line(done, exitcodes.BAD_TRACE, "wf-corrupt")
    good = record_line("wf-bent", 1) + "not json\n"
    put_trace(tmp_path, "wf-bent", good + record_line("wf-bent", 2, status="completed"))
    done = flowctl("--trace-dir", tmp_path, "profile", "wf-bent")
    assert done.returncode == exitcodes.BAD_TRACE
    assert done.stdout.startswith("wf-bent  run run1  completed")  # still shown
    assert done.stderr == "flowctl: wf-bent: 1 malformed line skipped\n"


def test_hostile_names_stay_text(tmp_path: Path) -> None:
    name = "evil\x1b[2J\u202e"
    frames = [{"function": name, "file": "/w/\x1b]0;x\x07.py", "line": 1, "code": None}]
    text = record_line("wf-evil", 1, trace=frames) + record_line(
        "wf-evil", 2, status="completed", trace=[], updated_at="2026-01-01T12:00:03+00:00"
    )
    put_trace(tmp_path, "wf-evil", text)
    out = profile(tmp_path, "wf-evil")
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\u202e" in out
    document = json.loads(profile(tmp_path, "wf-evil", "--json"))
    assert document["entries"][0]["function"] == name  # JSON stays exact


def test_the_shell_and_doeff_flow_know_the_command(traces: Path) -> None:
    from flowctl.options import COMMANDS

    assert "profile" in COMMANDS
    seed = flowctl("profile", "report", "--trace-dir", traces, "--top", "1", seed=True)
    assert seed.returncode == 0 and seed.stdout.startswith("report  run "), seed.stderr


@pytest.mark.parametrize("name", ["wf-fifo", "wf-sparse", "wf-link"])
def test_hostile_files_neither_hang_nor_leak(tmp_path: Path, name: str) -> None:
    """A FIFO for a trace, a 1 TiB sparse one, a link out of the directory: as export."""
    from tests.flowctl.test_commands_on_hostile_files import SECRET, hostile

    root = tmp_path / "traces"
    hostile(root, tmp_path / "outside")
    done = flowctl("--trace-dir", root, "profile", name, timeout=20)
    assert "Traceback" not in done.stderr and done.returncode != exitcodes.INTERNAL
    assert SECRET not in done.stdout + done.stderr
    if name == "wf-sparse":  # its record profiled; the zeros after it said, as history does
        assert done.returncode == exitcodes.BAD_TRACE
        assert done.stdout.startswith("wf-sparse  run run1  completed")
        return
    export = flowctl("--trace-dir", root, "export", name, "--format", "folded", timeout=20)
    assert done.returncode == export.returncode != exitcodes.OK
    assert done.stderr == export.stderr


def test_through_flowd_a_workflow_under_another_root_is_found(traces: Path, tmp_path: Path) -> None:
    with flowd("--root", traces, state=tmp_path / "state") as daemon:
        found = flowctl("--socket", daemon.socket, "profile", "report", "--json", cwd=tmp_path)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout) == as_json(traces, "report")
        missing = flowctl("--socket", daemon.socket, "profile", "wf-nope", cwd=tmp_path)
        assert_one_error_line(missing, exitcodes.NOT_FOUND, "no workflow 'wf-nope'")


def test_profile_and_flame_graphs_load_neither_doeff_nor_prompt_toolkit(
    traces: Path, tmp_path: Path
) -> None:
    code = f"""
        import sys
        from flowctl.cli import main
        main(["--trace-dir", {str(traces)!r}, "profile", "report"])
        for fmt in ("folded", "speedscope"):
            main(["--trace-dir", {str(traces)!r}, "export", "report", "--format", fmt,
                  "-o", {str(tmp_path)!r} + "/out." + fmt])
        roots = {{name.split(".")[0] for name in sys.modules}}
        print(sorted(roots & {{"doeff", "doeff_vm", "flowd", "prompt_toolkit"}}), file=sys.stderr)
    """
    done = run_command(python_command(code))
    assert done.stderr == "[]\n", done.stderr
    assert done.stdout.startswith("report  run ")
