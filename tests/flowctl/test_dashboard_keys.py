"""The dashboard you drive (``flowctl watch`` with no id): ↑↓ select, Enter opens the
selected workflow's watch, Esc returns, ``/`` filters by id, ``s`` cycles a status
filter; sorted by status then the longest without an update; failed and lost marked.

The state and its keys are tested directly (pure), then every key in a real terminal."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from doeff_flow_core import LiveTrace, TraceFrame
from flowctl.render.box import plain
from flowctl.sources.base import WorkflowEntry
from flowctl.watch.dashboard import KEYS, OPEN, QUIT, DashboardUI, picture, press, shown
from tests.support.flowctl import Tmux, flowctl_command
from tests.support.procs import python_env
from tests.support.workflows import start_blocked, write_traces

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def entry(name: str, status: str, seconds: float = 0) -> WorkflowEntry:
    record = LiveTrace(
        workflow_id=name,
        step=3,
        status="running" if status in ("running", "lost") else status,
        current_effect="Get('k')" if status in ("running", "lost") else None,
        trace=(TraceFrame("main", "/w.py", 1),),
        started_at=T0,
        updated_at=T0 + timedelta(seconds=seconds),
        error="KeyError: 'x'" if status == "failed" else None,
        result="30" if status == "completed" else None,
    )
    return WorkflowEntry(name, record, status)


ENTRIES = [
    entry("wf-done", "completed", 1),
    entry("wf-new", "running", 9),
    entry("wf-old", "running", 2),
    entry("wf-bad", "failed", 5),
    entry("wf-gone", "lost", 3),
]


def names(entries: list[WorkflowEntry]) -> list[str]:
    return [e.name for e in entries]


def test_sorted_by_status_then_the_longest_without_an_update() -> None:
    assert names(shown(ENTRIES, DashboardUI())) == [
        "wf-old",
        "wf-new",
        "wf-gone",
        "wf-bad",
        "wf-done",
    ]


def test_arrows_select_and_enter_opens_the_selected() -> None:
    listed = shown(ENTRIES, DashboardUI())
    ui, action = press(DashboardUI(), "down", listed)
    assert ui.selected == "wf-new" and action is None
    ui, _ = press(ui, "up", listed)
    ui, _ = press(ui, "up", listed)  # stays at the first
    assert ui.selected == "wf-old"
    ui, _ = press(ui, "end", listed)
    assert ui.selected == "wf-done"
    ui, action = press(ui, "c-m", listed)
    assert (ui.selected, action) == ("wf-done", OPEN)
    assert press(ui, "q", listed)[1] == QUIT


def test_slash_filters_by_id_and_s_cycles_the_status() -> None:
    ui = DashboardUI()
    for key in ["/", "O", "l", "x", "c-h", "d"]:
        ui, _ = press(ui, key, shown(ENTRIES, ui))
    assert ui.editing and ui.query == "Old"
    assert names(shown(ENTRIES, ui)) == ["wf-old"]  # any case
    ui, _ = press(ui, "c-m", shown(ENTRIES, ui))
    assert not ui.editing and ui.query == "Old"
    ui, _ = press(ui, "escape", shown(ENTRIES, ui))  # clears the filters, does not leave
    assert (ui.query, ui.status, ui.editing) == ("", None, False)
    ui, _ = press(ui, "s", ENTRIES)
    assert ui.status == "running" and names(shown(ENTRIES, ui)) == ["wf-old", "wf-new"]
    ui, _ = press(ui, "s", ENTRIES)
    assert names(shown(ENTRIES, ui)) == ["wf-bad"]
    ui, _ = press(ui, "s", ENTRIES)
    assert names(shown(ENTRIES, ui)) == ["wf-gone"]
    for _ in range(3):
        ui, _ = press(ui, "s", ENTRIES)
    assert ui.status is None  # back to all
    assert press(ui, "escape", ENTRIES)[1] == QUIT  # no filter left: Esc leaves


def test_the_picture_marks_the_selection_and_failed_and_lost_without_colour() -> None:
    ui = DashboardUI(selected="wf-bad")
    lines = picture(ENTRIES, ui, T0, 100, 20, source="files x")
    text = plain(lines)
    rows = text.splitlines()
    assert len(lines) == 20 and rows[-1] == KEYS  # the keys at the bottom
    assert rows[0].startswith("doeff-flow · 2 running · 1 lost · 1 failed · 1 completed")
    assert any(row.startswith("▶ ✗ wf-bad") for row in rows), text
    assert any(row.startswith("  ! wf-gone") for row in rows), text
    assert any(row.startswith("    wf-done") for row in rows), text
    styles = {style for line in lines for style, text in line if "wf-bad" in text}
    assert any("class:row.failed" in style for style in styles)
    # a small window shows the selected one's page and says what is elsewhere
    small = plain(picture(ENTRIES, DashboardUI(selected="wf-done"), T0, 100, 8, source="x"))
    assert "wf-done" in small and "wf-old" not in small and "above (↑)" in small
    filtered = plain(picture(ENTRIES, DashboardUI(query="zz"), T0, 100, 20, source="x"))
    assert "/zz  · 0 of 5 shown" in filtered and "no workflow passes the filters" in filtered


# -- in a terminal --------------------------------------------------------------------------


@pytest.fixture
def tmux() -> Iterator[Callable[..., Tmux]]:
    opened: list[Tmux] = []

    def open_tmux(*args: object) -> Tmux:
        session = Tmux(f"flowctl-dash-{len(opened)}", flowctl_command(*args), columns=120)
        opened.append(session)
        return session

    yield open_tmux
    for session in opened:
        session.close()


def selected_row(screen: str) -> str:
    rows = [row for row in screen.splitlines() if row.startswith("▶")]
    assert len(rows) == 1, screen
    return rows[0]


def test_every_dashboard_key_changes_the_screen(tmp_path: Path, tmux: Callable[..., Tmux]) -> None:
    write_traces(tmp_path, ("wf-done", "complete", 0), ("wf-bad", "fail", 0))
    env = python_env()
    running = start_blocked(tmp_path, "wf-run", env)
    killed = start_blocked(tmp_path, "wf-gone", env)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    try:
        drive(tmp_path, tmux)
    finally:
        running.kill()
        running.wait(timeout=30)


def drive(tmp_path: Path, tmux: Callable[..., Tmux]) -> None:
    term = tmux("--trace-dir", tmp_path, "watch")
    screen = term.wait_for("1 lost")
    assert "1 running · 1 lost · 1 failed · 1 completed" in screen and KEYS in screen
    assert "wf-run" in selected_row(screen)  # the first, running, selected
    assert "! wf-gone" in screen and "✗ wf-bad" in screen  # marked, colour or not
    order = [screen.index(name) for name in ("wf-run", "wf-gone", "wf-bad", "wf-done")]
    assert order == sorted(order), screen

    term.keys("Down")  # ↓ selects the next
    screen = term.wait_for("▶ ! wf-gone")
    term.keys("Down")
    term.wait_for("▶ ✗ wf-bad")

    term.keys("Enter")  # opens the selected workflow's watch
    screen = term.wait_for("┌─ wf-bad [failed]")
    assert "error: ValueError: bad \\x1b[2J" in screen and "Esc back" in screen
    assert "doeff-flow ·" not in screen

    term.keys("Escape")  # back to the dashboard, the selection kept
    screen = term.wait_for("doeff-flow ·")
    assert "wf-bad" in selected_row(screen) and "┌─" not in screen

    term.keys("/", "d", "o")  # filters by id as it is typed
    screen = term.wait_for("/do▏")
    assert "wf-done" in screen and "wf-run" not in screen and "1 of 4 shown" in screen
    term.keys("Escape")  # drops the filter
    screen = term.wait_for("wf-run")
    assert "/do" not in screen

    term.keys("s")  # status: running
    screen = term.wait_for("status: running")
    assert "wf-run" in screen and "wf-bad" not in screen and "wf-done" not in screen
    term.keys("s")  # status: failed
    screen = term.wait_for("status: failed")
    assert "wf-bad" in screen and "wf-run" not in screen
    term.keys("Escape")  # clears it
    screen = term.wait_for("wf-run")
    assert "status:" not in screen

    term.keys("?")
    term.wait_for("cycle the status filter")
    term.keys("x")
    term.wait_for(KEYS)
    term.keys("q")
    assert "EXIT=0" in term.wait_for("EXIT=")


def test_plain_dashboard_still_prints_lines(tmp_path: Path) -> None:
    write_traces(tmp_path, ("wf-a", "complete", 0))
    done = subprocess.run(
        flowctl_command("--trace-dir", tmp_path, "watch", "--exit-on-complete"),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.split()[1:3] == ["wf-a", "completed"]
    assert KEYS not in done.stdout
