"""``watch`` on a terminal: a full-screen prompt-toolkit view, redrawn when something
changes (and once a second, for the idle time). ``q``, Esc or Ctrl-C leave it; the
arrows, j/k, PageUp/PageDown, space/b, Home/End and g/G scroll a view taller than
the terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, TextIO

from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.styles import Style

from flowctl import exitcodes
from flowctl.render.box import plain
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
    }
)


def run_screen(
    model: WatchModel, interval: float, exit_on_complete: bool, out: TextIO | None = None
) -> int:
    """Show ``model`` full screen until the user leaves or (``exit_on_complete``) it ends.

    When it ends, the last picture is printed to ``out`` so it stays on the terminal.
    """
    columns = FALLBACK_COLUMNS
    top = 0  # the first line shown, for screens taller than the terminal

    def fragments() -> StyleAndTextTuples:
        nonlocal top
        lines = model.screen(columns, datetime.now(UTC))
        rows = app.output.get_size().rows or len(lines)
        top = max(0, min(top, len(lines) - rows))
        result: StyleAndTextTuples = []
        for line in lines[top : top + rows]:
            result.extend(line)
            result.append(("", "\n"))
        return result

    bindings = KeyBindings()

    def scroller(step: Callable[[int], int]) -> Callable[[KeyPressEvent], None]:
        def scroll(event: KeyPressEvent) -> None:
            nonlocal top
            top = max(0, step(app.output.get_size().rows or 1))
            event.app.invalidate()

        return scroll

    for keys, step in (
        (("down", "j"), lambda rows: top + 1),
        (("up", "k"), lambda rows: top - 1),
        (("pagedown", " "), lambda rows: top + rows - 1),
        (("pageup", "b"), lambda rows: top - rows + 1),
        (("home", "g"), lambda rows: 0),
        (("end", "G"), lambda rows: 1 << 30),
    ):
        for key in keys:
            bindings.add(key)(scroller(step))

    @bindings.add("q")
    @bindings.add("c-c")
    @bindings.add("escape", eager=True)
    def _leave(event: KeyPressEvent) -> None:
        event.app.exit(result=None)

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
        while True:
            changed = model.tick(0)
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
        out.write(plain(model.screen(columns, datetime.now(UTC))) + "\n")
        out.flush()
    return code
