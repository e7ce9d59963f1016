"""Untrusted text never drives the terminal: a crafted trace (every field holding ESC[2J,
an OSC 52 clipboard write, CR, a bidi override and a C1 CSI) shown by ``ps``, ``history``
and ``watch`` (plain, ``--status-only``, the dashboard, and full screen in a real
terminal), read from the files and through a real flowd, prints nothing but escapes.

A record whose ``workflow_id`` differs from its directory is listed under the directory's
name, the mismatch said as its problem, by both sources alike."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from doeff_flow_core.escape import safe
from doeff_flow_core.liveness import this_host
from flowctl import exitcodes
from tests.support.flowctl import Tmux, flowctl_command
from tests.support.flowd import Flowd
from tests.support.procs import python_env, wait_for
from tests.support.traces import put_trace, record_line

# ESC[2J clears the screen, OSC 52 sets the clipboard, CR rewrites the line, U+202E
# reverses what follows, U+009B is a one-byte CSI, U+2066 a bidi isolate.
EVIL = "\x1b[2J\x1b]52;c;ZXZpbA==\x07\r\u202e\x9b31m\u2066"
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SHOWN = "\\x1b[2J"  # how the screen clear is shown once escaped
TIMEOUT = 30


def inert(data: bytes) -> str:
    """``data`` as text, asserted to hold nothing a terminal acts on: no C0 control but
    newline, no DEL or C1, no bidi control, no lone surrogate."""
    text = data.decode("utf-8")
    bad = sorted(
        {
            char
            for char in text
            if (char < " " and char != "\n")
            or "\x7f" <= char <= "\x9f"
            or char in BIDI
            or "\ud800" <= char <= "\udfff"
        }
    )
    assert not bad, f"raw controls {bad!r} in {text!r}"
    return text


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def crafted_frame() -> dict[str, object]:
    return {
        "function": "main" + EVIL,
        "file": f"/w/{EVIL}flow.py",
        "line": 3,
        "code": EVIL,
        "args": EVIL,
    }


def write_crafted(trace_dir: Path) -> None:
    """Three workflows whose records name another id and hold EVIL in every text field:
    one lost (its writer gone), one failed, one completed; and a line whose status is
    crafted, which no reader takes as a record."""
    common = {
        "current_effect": f"Get({EVIL!r}){EVIL}",
        "trace": [crafted_frame(), {**crafted_frame(), "function": "step" + EVIL}],
        "last_slog": {"msg": "fetching" + EVIL, "fields": {"k" + EVIL: EVIL}},
    }
    put_trace(
        trace_dir,
        "wf-lost",
        record_line("wf-lost" + EVIL, 1, **common)
        + record_line("wf-lost" + EVIL, 2, pid=dead_pid(), host=this_host(), **common),
    )
    put_trace(
        trace_dir,
        "wf-failed",
        record_line("wf-failed" + EVIL, 1, **common)
        + record_line("wf-failed", 2, status="failed" + EVIL)
        + record_line("wf-failed" + EVIL, 3, status="failed", error="ValueError: " + EVIL),
    )
    put_trace(
        trace_dir,
        "wf-done",
        record_line("wf-done" + EVIL, 1, **common)
        + record_line("wf-done" + EVIL, 2, status="completed", result=EVIL),
    )


def run(*args: object, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """flowctl ARGS off a terminal; its exit code and output, asserted inert."""
    done = subprocess.run(
        flowctl_command(*args),
        env=python_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, inert(done.stdout), inert(done.stderr)


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    path = Path(os.path.realpath(tmp_path)) / "traces"
    path.mkdir()
    write_crafted(path)
    return path


def check_commands(*where: object) -> None:
    """Every reading command, through the source ``where`` names, prints escapes only."""
    code, out, err = run(*where, "ps")
    assert code == exitcodes.OK, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["wf-done", "wf-failed", "wf-lost"], out
    assert all("workflow_id" in line for line in lines), out  # the mismatch, as the problem
    assert SHOWN in out
    code, out, err = run(*where, "--verbose", "ps", "--status", "lost")
    assert code == exitcodes.OK and out.startswith("wf-lost "), (out, err)
    for workflow_id in ("wf-lost", "wf-failed", "wf-done"):
        code, out, err = run(*where, "history", workflow_id)
        assert code in (exitcodes.OK, exitcodes.BAD_TRACE), err
        assert out.count("\n") >= 2, out
        code, out, err = run(*where, "watch", workflow_id, "--status-only", "--exit-on-complete")
        assert code in (exitcodes.OK, exitcodes.WORKFLOW_FAILED), err
        assert f"  {workflow_id}  " in out, out
        code, out, err = run(*where, "watch", workflow_id, "--exit-on-complete")
        assert code in (exitcodes.OK, exitcodes.WORKFLOW_FAILED), err
        assert f"  {workflow_id}  " in out, out
        assert SHOWN in out or workflow_id == "wf-lost", out  # the error, the result
    code, out, err = run(*where, "watch", "--exit-on-complete")
    assert code == exitcodes.WORKFLOW_FAILED, err
    assert {line.split()[1] for line in out.splitlines()} == {"wf-done", "wf-failed", "wf-lost"}
    code, out, err = run(*where, "history", "wf-lost", "--follow")
    assert code == exitcodes.OK and SHOWN in out, err


def test_crafted_traces_read_from_the_files_print_only_escapes(traces: Path) -> None:
    check_commands("--trace-dir", traces)


def test_an_error_naming_a_crafted_path_is_escaped(tmp_path: Path) -> None:
    missing = Path(os.path.realpath(tmp_path)) / f"gone{EVIL}"
    code, out, err = run("--trace-dir", missing, "ps")
    assert code != exitcodes.OK and out == ""
    assert err.startswith("flowctl: ") and err.count("\n") == 1 and SHOWN in err, err
    code, out, err = run("--trace-dir", missing, "--verbose", "history", "wf-x")
    assert code != exitcodes.OK and out == "" and SHOWN in err, err


@pytest.fixture
def crafted_root(traces: Path) -> Iterator[Path]:
    """A second root whose very path is crafted, holding ``wf-lost`` too: flowd then names
    that workflow ``wf-lost@ROOT`` in its answers."""
    base = Path(tempfile.mkdtemp(prefix="esc", dir="/tmp"))
    root = base / f"r{EVIL}"
    root.mkdir()
    shutil.copytree(traces / "wf-lost", root / "wf-lost")
    yield root
    shutil.rmtree(base, ignore_errors=True)


def test_crafted_traces_through_flowd_print_only_escapes(
    tmp_path: Path, traces: Path, crafted_root: Path
) -> None:
    daemon = Flowd("--root", traces, state=tmp_path / "state")
    try:
        with daemon.client() as client:
            wait_for(lambda: len(client.call("ps")["workflows"]) == 3, what="the index")
        check_commands("--socket", daemon.socket)
        with daemon.client() as client:
            client.call("roots.add", path=str(crafted_root))
            wait_for(lambda: len(client.call("ps")["workflows"]) == 4, what="the second root")
        code, out, err = run("--socket", daemon.socket, "ps")
        assert code == exitcodes.OK, err
        assert f"wf-lost@{safe(str(crafted_root))}" in out, out
        code, out, err = run("--socket", daemon.socket, "watch", "--exit-on-complete")
        assert code == exitcodes.WORKFLOW_FAILED and safe(str(crafted_root)) in out, err
        daemon.stop()
        inert(daemon.log_path.read_bytes())  # flowd's log names the crafted root, escaped
    finally:
        daemon.cleanup()


# -- full screen, in a real terminal ----------------------------------------------------------


@pytest.fixture
def terminal() -> Iterator[list[Tmux]]:
    opened: list[Tmux] = []
    yield opened
    for term in opened:
        term.close()


def test_the_full_screen_watch_shows_crafted_text_escaped(
    traces: Path, terminal: list[Tmux]
) -> None:
    term = Tmux("flowctl-esc", flowctl_command("--trace-dir", traces, "watch", "wf-lost"))
    terminal.append(term)
    screen = term.wait_for("[lost]")
    assert "main\\x1b[2J" in screen and "\\u202e" in screen and "\\x9b31m" in screen
    assert "record says workflow_id wf-lost\\x1b[2J" in screen, screen
    assert "wf-lost" in screen.splitlines()[0]  # nothing cleared the box's first line
    term.keys("q")
    term.wait_for("EXIT=0")


def test_the_full_screen_dashboard_through_flowd_shows_crafted_names_escaped(
    tmp_path: Path, traces: Path, crafted_root: Path, terminal: list[Tmux]
) -> None:
    daemon = Flowd("--root", traces, "--root", crafted_root, state=tmp_path / "state")
    try:
        with daemon.client() as client:
            wait_for(lambda: len(client.call("ps")["workflows"]) == 4, what="the index")
        term = Tmux("flowctl-esc", flowctl_command("--socket", daemon.socket, "watch"), columns=220)
        terminal.append(term)
        screen = term.wait_for("wf-lost@")
        assert "\\x1b[2J" in screen and "\\u202e" in screen, screen
        assert "2 lost · 1 failed · 1 completed" in screen, screen
        assert screen.count("record says workflow_id wf-") == 4, screen
        term.keys("q")
        term.wait_for("EXIT=0")
    finally:
        daemon.cleanup()


def test_the_shell_shows_a_crafted_trace_directory_escaped(
    traces: Path, terminal: list[Tmux]
) -> None:
    crafted = traces.parent / f"t{EVIL}"
    traces.rename(crafted)
    term = Tmux("flowctl-esc", flowctl_command("--trace-dir", crafted), columns=250)
    terminal.append(term)
    screen = term.wait_for("1 lost · 1 failed · 1 completed")  # the toolbar
    assert screen.count(safe(str(crafted))) >= 2, screen  # the banner and the toolbar
    term.keys("ps", "Enter")
    screen = term.wait_for("wf-lost ")
    assert "record says workflow_id wf-lost\\x1b[2J" in screen, screen
    term.keys("C-d")
    term.wait_for("EXIT=0")


def test_shell_commands_from_a_pipe_print_only_escapes(traces: Path) -> None:
    done = subprocess.run(
        flowctl_command("--trace-dir", traces, "shell"),
        env=python_env(),
        input=b"ps\nhistory wf-failed\nwatch wf-done --exit-on-complete\nhistory nope\n",
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    out, err = inert(done.stdout), inert(done.stderr)
    assert "wf-lost " in out and SHOWN in out and "nope" in err, (out, err)


# -- a server that is not flowd, answering crafted text --------------------------------------


def crafted_summary(workflow_id: str, root: str) -> dict[str, object]:
    record = json.loads(record_line(workflow_id + EVIL, 2, status="failed", error=EVIL))
    return {
        "workflow_id": workflow_id,
        "root": root,
        "status": "lost" + EVIL,
        "record": record,
        "problem": "problem" + EVIL,
    }


def crafted_answer(method: str) -> dict[str, object]:
    """What the server answers: summaries whose every string is crafted, and errors whose
    message is."""
    if method == "ping":
        return {"result": {"pid": os.getpid(), "version": EVIL}}
    if method == "ps":
        items = [crafted_summary(EVIL + "wf", "/r" + EVIL), crafted_summary(EVIL + "wf", "/s")]
        items.append(crafted_summary("wf-x", "/r" + EVIL))
        return {"result": {"workflows": items}}
    if method == "get":
        return {"result": crafted_summary("wf-x", "/r" + EVIL)}
    if method == "stats":
        return {"result": {"otlp": {"state": EVIL, "last_error": EVIL, "x" + EVIL: 1}}}
    if method == "roots.list":
        root = {"path": "/r" + EVIL, "origin": EVIL, "workflows": 1, "watch": EVIL}
        return {"result": {"roots": [root]}}
    return {"error": {"code": -32000, "message": "no such thing " + EVIL}}


@pytest.fixture
def crafted_server() -> Iterator[Path]:
    """A Unix socket in a private directory, answering each request with crafted text."""
    base = Path(tempfile.mkdtemp(prefix="esc", dir="/tmp"))
    path = base / "s"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = json.loads(line)
                answer = {"jsonrpc": "2.0", "id": request.get("id")}
                conn.sendall(json.dumps({**answer, **crafted_answer(request["method"])}).encode())
                conn.sendall(b"\n")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield path
    server.close()
    shutil.rmtree(base, ignore_errors=True)


def test_what_a_crafted_server_answers_is_shown_escaped(crafted_server: Path) -> None:
    code, out, err = run("--socket", crafted_server, "--verbose", "ps")
    assert code == exitcodes.OK, err
    assert out.count("\n") == 3 and safe("/r" + EVIL) in out and "\\u2066wf@/" in out, out
    for args in (
        ["history", "wf-x"],
        ["watch", "wf-x", "--exit-on-complete"],
        ["watch", "--exit-on-complete"],
        ["history", "wf-x", "--follow"],
    ):
        code, out, err = run("--socket", crafted_server, *args, timeout=10)
        assert "Traceback" not in err, (code, err)
        assert SHOWN in out + err, (args, out, err)


@pytest.mark.parametrize("command", ["status", "roots"])
def test_flowds_status_and_roots_are_shown_escaped(crafted_server: Path, command: str) -> None:
    code, out, err = run("--socket", crafted_server, command)
    assert code == exitcodes.OK, err  # run() asserted the output inert
    assert out.count(SHOWN) >= (4 if command == "status" else 2), out
