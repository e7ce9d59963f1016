"""``watch`` on a terminal: a full-screen prompt-toolkit view, redrawn when something
changes (and once a second, for the idle time). Ctrl-C leaves it; every other key goes
to the model (``WorkflowWatch`` scrolls, ``DashboardWatch`` selects, filters and opens
a workflow's watch), which also draws the keys it takes in a footer."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Final, TextIO

from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.styles import Style

from doeff_flow_core.escape import safe
from flowctl import exitcodes
from flowctl.render.box import plain
from flowctl.sources.base import Notes
from flowctl.watch.model import WatchModel

CLOCK_REFRESH: Final = 1.0
FALLBACK_COLUMNS: Final = 80

STYLE: Final = Style.from_dict(
    {
        "border": "#888888",
        "title": "bold",
        "status.running": "bold ansigreen",
        "status.completed": "bold ansiblue",
        "status.failed": "bold ansired",
        "status.lost": "bold ansimagenta",
        "status.unknown": "bold ansiyellow",
        "status.unreadable": "ansired",
        "waiting": "ansiyellow",
        "function": "bold",
        "location": "#888888",
        "effect": "ansicyan",
        "task": "underline",
        "slog": "italic",
        "idle": "ansiyellow",
        "note": "#888888",
        "hint": "bold ansiyellow",
        "footer": "reverse",
        "filter": "bold ansicyan",
        "selected": "reverse",
        "row.failed": "bold ansired",
        "row.lost": "bold ansimagenta",
        "row.unreadable": "ansired",
    }
)


def run_screen(
    model: WatchModel,
    interval: float,
    exit_on_complete: bool,
    out: TextIO | None = None,
    notes: Notes | None = None,
) -> int:
    """Show ``model`` full screen until the user leaves or (``exit_on_complete``) it ends;
    what the source says of itself (``notes``) on a status line at the bottom.

    When it ends, the last picture is printed to ``out`` so it stays on the terminal.
    """
    columns = FALLBACK_COLUMNS

    def status_line() -> str | None:
        return None if notes is None else notes.current

    def fragments() -> StyleAndTextTuples:
        note = status_line()
        rows = app.output.get_size().rows or 24
        rows = max(1, rows - 1) if note else rows
        result: StyleAndTextTuples = []
        for line in model.screen(columns, rows, datetime.now(UTC))[:rows]:
            result.extend(line)
            result.append(("", "\n"))
        if note:
            result.append(("class:note", safe(note)[:columns]))
        return result

    bindings = KeyBindings()

    @bindings.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        event.app.exit(result=None)

    @bindings.add(Keys.Any)
    @bindings.add("escape", eager=True)
    def _press(event: KeyPressEvent) -> None:
        # every other key goes to the model: what it does depends on what is shown
        pressed = event.key_sequence[0]
        key = pressed.key.value if isinstance(pressed.key, Keys) else pressed.key
        if model.press(key):
            event.app.exit(result=None)
        else:
            event.app.invalidate()

    app: Application[int | None] = Application(
        layout=Layout(Window(FormattedTextControl(fragments), wrap_lines=False)),
        key_bindings=bindings,
        style=STYLE,
        full_screen=True,
    )

    failures: list[Exception] = []

    async def poller() -> None:
        try:
            await poll_forever()
        except Exception as exc:  # raised again below, once the terminal is restored
            failures.append(exc)
            app.exit(result=None)

    async def poll_forever() -> None:
        nonlocal columns
        drawn = 0.0
        noted = status_line()
        while True:
            changed = model.tick(0) or status_line() != noted
            noted = status_line()
            size = app.output.get_size().columns or FALLBACK_COLUMNS
            now = time.monotonic()
            if changed or size != columns or now - drawn >= CLOCK_REFRESH:
                columns, drawn = size, now
                app.invalidate()
            if exit_on_complete:
                code = model.outcome()
                if code is not None:
                    app.exit(result=code)
                    return
            await asyncio.sleep(model.pace(interval))

    def start() -> None:
        app.create_background_task(poller())

    try:
        code = app.run(pre_run=start)
    finally:
        model.close()
    if failures:
        raise failures[0]
    if code is None:
        return exitcodes.INTERRUPTED if exit_on_complete else exitcodes.OK
    if out is not None:
        out.write(plain(model.screen(columns, None, datetime.now(UTC))) + "\n")
        out.flush()
    return code
