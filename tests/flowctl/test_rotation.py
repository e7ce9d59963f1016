"""flowctl over rotated traces (``trace.jsonl.1 ... .N``), symlinked workflow directories
and traces no line bound can hold: real workflows in subprocesses, flowctl as a process."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Callable
from pathlib import Path

from doeff_flow_core.tracefiles.writing import Rotation, TraceWriter
from flowctl import exitcodes
from flowctl.sources.files import FileSource
from tests.support.flowctl import flowctl, flowctl_command
from tests.support.procs import python_env, run_python, wait_until
from tests.support.traces import json_lines, put_trace, read_jsonl, record_line
from tests.support.workflows import start_workflow, write_traces

# Small parts, kept long enough that nothing is dropped while a test reads them.
ROTATE = {"DOEFF_FLOW_MAX_TRACE_BYTES": "4000", "DOEFF_FLOW_KEEP_ROTATED": "200"}


def every_record(trace: Path) -> list[dict[str, object]]:
    """Every record of a trace and its rotated parts, oldest first."""
    parts = sorted(trace.parent.glob("trace.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    return [record for part in [*parts, trace] for record in read_jsonl(part)]


def steps(records: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["run"], r["step"]) for r in records]


def test_history_reads_across_rotated_parts(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-rot", "paced", 12), env=ROTATE)
    trace = tmp_path / "wf-rot" / "trace.jsonl"
    assert (tmp_path / "wf-rot" / "trace.jsonl.2").exists()
    expected = every_record(trace)
    assert len(read_jsonl(trace)) < 30 < len(expected)
    done = flowctl("--trace-dir", tmp_path, "history", "wf-rot", "--last", 30, "--json")
    assert done.returncode == exitcodes.OK, done.stderr
    assert json_lines(done.stdout) == [json.loads(json.dumps(r)) for r in expected[-30:]]
    everything = flowctl("--trace-dir", tmp_path, "history", "wf-rot", "--last", 100000, "--json")
    assert steps(json_lines(everything.stdout)) == steps(expected)
    text = flowctl("--trace-dir", tmp_path, "history", "wf-rot", "--last", 30)
    assert len(text.stdout.splitlines()) == 30 and "completed" in text.stdout


def test_history_follow_through_rotations_loses_and_repeats_nothing(
    tmp_path: Path, start_python: Callable[..., subprocess.Popen[str]]
) -> None:
    gate = tmp_path / "gate"  # the workflow stops after its first paced step until it exists
    live = start_workflow(start_python, tmp_path, "wf-live", "paced", 25, gate=gate, env=ROTATE)
    trace = tmp_path / "wf-live" / "trace.jsonl"
    # stopped at the gate: its trace holds the first paced step, and nothing more comes
    assert wait_until(lambda: trace.exists() and b"Slow(seconds=0.15)" in trace.read_bytes(), 20)
    follower = subprocess.Popen(
        flowctl_command("--trace-dir", tmp_path, "history", "wf-live", "--last", 1, "-f", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert follower.stdout is not None
    # the last record, printed once the follower is following: only then does the
    # workflow go on (the line is all there is to read until then)
    assert select.select([follower.stdout], [], [], 30)[0], "nothing printed"
    first = follower.stdout.readline()
    gate.touch()
    out, err = follower.communicate(timeout=60)
    assert live.wait(timeout=30) == 0
    assert follower.returncode == exitcodes.OK, err
    seen = steps(json_lines(first + out))
    expected = steps(every_record(trace))
    assert (tmp_path / "wf-live" / "trace.jsonl.3").exists()  # it did rotate, several times
    assert len(seen) == len(set(seen))  # nothing repeated
    assert seen == expected[expected.index(seen[0]) :]  # nothing lost, in order, to the end
    assert len(seen) > len(read_jsonl(trace))


def test_feed_follows_several_rotations_between_two_polls(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, "wf-1", Rotation(max_bytes=3000, keep=50))
    writer.write(record_line("wf-1", 1))
    # history --follow (every record) and watch
    follows = [
        FileSource(tmp_path).follow("wf-1", snapshot=5, every_record=e) for e in (True, False)
    ]
    for feed in follows:
        assert [r.step for r in feed.poll(0).records] == [1]
    for step in range(2, 40):  # several rotations before anyone polls
        writer.write(record_line("wf-1", step))
    assert (tmp_path / "wf-1" / "trace.jsonl.3").exists()
    for feed in follows:
        got: list[int] = []
        for _ in range(40):
            update = feed.poll(0)
            assert not update.reset
            got += [r.step for r in update.records]
        assert got == list(range(2, 40))
    for step in range(40, 45):  # and the new trace.jsonl is followed on
        writer.write(record_line("wf-1", step))
    for feed in follows:
        got = [r.step for _ in range(5) for r in feed.poll(0).records]
        assert got == list(range(40, 45))
        feed.close()
    writer.close()


def test_feed_finishes_the_old_file_written_just_before_the_rotation(tmp_path: Path) -> None:
    path = put_trace(tmp_path, "wf-1", record_line(step=1))
    feed = FileSource(tmp_path).follow("wf-1", snapshot=5, every_record=True)
    assert [r.step for r in feed.poll(0).records] == [1]
    with path.open("a") as handle:  # written after the last poll, then rotated away
        handle.write(record_line(step=2) + record_line(step=3))
    path.rename(path.with_name("trace.jsonl.1"))
    path.write_text(record_line(step=4))
    got = [r.step for _ in range(4) for r in feed.poll(0).records]
    assert got == [2, 3, 4]


def test_a_replaced_trace_still_starts_again(tmp_path: Path) -> None:
    path = put_trace(tmp_path, "wf-1", record_line(step=1) + record_line(step=2))
    feed = FileSource(tmp_path).follow("wf-1", snapshot=5)
    assert [r.step for r in feed.poll(0).records] == [1, 2]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(record_line(step=7))
    replacement.replace(path)  # not a rotation: no trace.jsonl.1 holds the old file
    update = feed.poll(0)
    assert update.reset and [r.step for r in update.records] == [7]


# -- paths ----------------------------------------------------------------------------------------


def test_a_symlinked_workflow_directory_is_never_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_traces(outside, ("wf-secret", "complete", 0))
    write_traces(root, ("wf-ok", "complete", 0))
    (root / "wf-secret").symlink_to(outside / "wf-secret")
    (root / "wf-ok" / "trace.jsonl.1").symlink_to(outside / "wf-secret" / "trace.jsonl")
    ps = flowctl("--trace-dir", root, "ps", "--json")
    assert [e["workflow_id"] for e in json.loads(ps.stdout)] == ["wf-ok"]
    for done in (
        flowctl("--trace-dir", root, "history", "wf-secret", "--json"),
        flowctl("--trace-dir", root, "history", "wf-secret", "-f", "--json", timeout=10),
        _watch_briefly(root, "wf-secret"),
    ):
        assert "completed" not in done.stdout and "processing" not in done.stdout, done
    for command in (["history"], ["history", "-f"], ["watch", "--exit-on-complete"]):
        linked = flowctl("--trace-dir", root, *command, "wf-secret", timeout=10)
        assert linked.returncode == exitcodes.NOT_FOUND, (command, linked.stderr)
        assert "symbolic link" in linked.stderr
    # a rotated part that is a link is not read either
    whole = flowctl("--trace-dir", root, "history", "wf-ok", "--last", 1000, "--json")
    assert {r["workflow_id"] for r in json_lines(whole.stdout)} == {"wf-ok"}


def _watch_briefly(root: Path, workflow_id: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        flowctl_command("--trace-dir", root, "watch", workflow_id, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        out, err = proc.communicate(timeout=1.5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


RSS = r"""
import sys
from flowctl.cli import main
code = main(sys.argv[1:])
# VmHWM: this process's peak RSS (ru_maxrss would count the forked parent's before exec)
peak = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print("RSS", peak, code, file=sys.stderr)
"""


def _max_rss_kib(*args: object) -> tuple[int, subprocess.CompletedProcess[str]]:
    done = run_python(RSS, *args, timeout=120)
    line = [x for x in done.stderr.splitlines() if x.startswith("RSS ")][-1]
    return int(line.split()[1]), done


def test_a_gigantic_line_and_nul_bytes_are_read_in_bounded_memory(tmp_path: Path) -> None:
    small = tmp_path / "small"
    put_trace(small, "wf-1", record_line("wf-1", 1))
    baseline, _ = _max_rss_kib("--trace-dir", small, "history", "wf-1")
    huge = b'{"workflow_id": "' + b"\0x" * (25 * 1024 * 1024) + b'"}\n'
    put_trace(tmp_path, "wf-1", record_line("wf-1", 1).encode() + huge + b"\0" * 1000 + b"\n")
    for args in (
        ["history", "wf-1", "--last", 5],
        ["history", "wf-1", "--last", 5, "--json"],
        ["ps"],
    ):
        rss, done = _max_rss_kib("--trace-dir", tmp_path, *args)
        assert rss - baseline < 20 * 1024, (args, rss, baseline, done.stderr)  # KiB: under 20 MiB
        assert "Traceback" not in done.stderr
    rss, done = _max_rss_kib("--trace-dir", tmp_path, "history", "wf-1", "--last", 5)
    assert done.stdout.count("\n") == 1 and "malformed" in done.stderr


# -- untrusted text ---------------------------------------------------------------------------

OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
EVIL = f"a{OSC52}\x1b[2J\x1b[31mred\rover\u202egnp.exe\u2066x"


def test_hostile_text_is_escaped_everywhere_and_exact_in_json(tmp_path: Path) -> None:
    fields = {
        "current_effect": f"Ask({EVIL!r})",
        "last_slog": {"msg": EVIL, "fields": {"k": EVIL}},
        "trace": [{"function": f"f{EVIL}", "file": "/w/x.py", "line": 3, "code": None}],
    }
    running = record_line("wf-evil", 1, **fields)
    failed = record_line("wf-evil", 2, status="failed", error=f"ValueError: {EVIL}", **fields)
    put_trace(tmp_path, "wf-evil", running + failed)
    texts = [
        flowctl("--trace-dir", tmp_path, "ps"),
        flowctl("--trace-dir", tmp_path, "history", "wf-evil"),
        flowctl("--trace-dir", tmp_path, "history", "wf-evil", "-f"),
        flowctl("--trace-dir", tmp_path, "watch", "wf-evil", "--exit-on-complete"),
        flowctl("--trace-dir", tmp_path, "watch", "--exit-on-complete"),
    ]
    for done in texts:
        out = done.stdout + done.stderr
        assert out.strip(), done
        for raw in ("\x1b", "\x07", "\r", "\u202e", "\u2066"):
            assert raw not in out, (done.args, raw, out)
    assert "\\x1b]52;c;" in texts[1].stdout and "\\u202e" in texts[1].stdout
    assert "ValueError: a\\x1b]52" in texts[1].stdout
    exact = flowctl("--trace-dir", tmp_path, "history", "wf-evil", "--json")
    records = json_lines(exact.stdout)
    assert records[1]["error"] == f"ValueError: {EVIL}"
    assert (
        records[0]["last_slog"]["msg"] == EVIL and records[0]["current_effect"] == f"Ask({EVIL!r})"
    )
    ps = json.loads(flowctl("--trace-dir", tmp_path, "ps", "--json").stdout)
    assert ps[0]["error"] == f"ValueError: {EVIL}"
