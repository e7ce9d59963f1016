"""What ``watch`` shows, independent of how: one workflow, or the dashboard of all.

A watch model polls its feed (``tick``), keeps the effective status fresh (a killed
writer changes no file, so liveness is re-checked every LIVENESS_INTERVAL seconds),
and renders either lines for plain output or a screen for the full-screen view.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from typing import Final, Protocol

from doeff_flow_core.escape import safe
from doeff_flow_core.records import COMPLETED, FAILED, LOST, RUNNING
from flowctl import exitcodes
from flowctl.render.box import WATCH_HELP, WATCH_KEYS, Line, box, help_lines, watch_picture
from flowctl.render.text import change_line, ps_object, waiting_line
from flowctl.render.timefmt import clock
from flowctl.sources.base import Source, WorkflowEntry
from flowctl.watch import dashboard
from flowctl.watch.state import WorkflowView, fold

LIVENESS_INTERVAL: Final = 1.0
WAITING: Final = "waiting"  # the status a watch shows before the trace exists
ENDED: Final = (COMPLETED, FAILED, LOST)


def exit_code_for(status: str) -> int | None:
    """``--exit-on-complete``: 0 when completed, 1 when failed or lost, None to go on."""
    if status == COMPLETED:
        return exitcodes.OK
    if status in (FAILED, LOST):
        return exitcodes.WORKFLOW_FAILED
    return None


class WatchModel(Protocol):
    def tick(self, timeout: float) -> bool:
        """Poll once (waiting up to ``timeout``); True when what is shown changed."""
        ...

    def pace(self, interval: float) -> float: ...

    def outcome(self) -> int | None:
        """The ``--exit-on-complete`` exit code once the watched work has ended."""
        ...

    def plain_lines(self, now: datetime) -> list[str]:
        """Lines for plain output about what changed since the last call."""
        ...

    def screen(self, columns: int, rows: int | None, now: datetime) -> list[Line]:
        """The picture at most ``rows`` tall, the keys under it; whole with None."""
        ...

    def press(self, key: str) -> bool:
        """A key (prompt-toolkit's name or the character); True to leave."""
        ...

    def close(self) -> None: ...


class WorkflowWatch:
    """One workflow: the latest record of each live task of its current run."""

    def __init__(
        self, source: Source, workflow_id: str, *, status_only: bool = False, as_json: bool = False
    ) -> None:
        self._source = source
        self._feed = source.follow(workflow_id)
        self._status_only = status_only
        self._as_json = as_json
        self.view = WorkflowView(workflow_id)
        self.status: str | None = None
        self._checked = 0.0
        self._shown: object = None  # what the last plain line said
        self._top = 0  # the first body line on the screen
        self._rows = 24
        self._help = False
        self.footer = WATCH_KEYS

    def tick(self, timeout: float) -> bool:
        before_view, before_status = self.view, self.status
        self.view = fold(self.view, self._feed.poll(timeout))
        record = self.view.latest
        now = time.monotonic()
        if record is None:
            self.status = None
        elif self.view is not before_view or now - self._checked >= LIVENESS_INTERVAL:
            self.status = self._source.status(record)
            self._checked = now
        return self.view is not before_view or self.status != before_status

    def pace(self, interval: float) -> float:
        return self._feed.pace(interval)

    def outcome(self) -> int | None:
        return None if self.status is None else exit_code_for(self.status)

    def plain_lines(self, now: datetime) -> list[str]:
        record, status = self.view.latest, self.status
        if record is None or status is None:
            shown: object = WAITING  # once, whether or not the (empty) trace exists yet
        else:
            shown = status if self._status_only else (record.run, record.step, status)
        if shown == self._shown:
            return []
        self._shown = shown
        if self._as_json:
            entry = WorkflowEntry(self.view.workflow_id, record, status or WAITING)
            return [json.dumps(ps_object(entry, now))]
        if record is None or status is None:
            return [waiting_line(self.view.workflow_id, self._source.location)]
        line = change_line(
            record, status, now, status_only=self._status_only, name=self.view.workflow_id
        )
        failed = self.view.failed_task
        if status == FAILED and record.is_terminal and failed is not None and not self._status_only:
            line += f"  (in task {failed.task})"  # which of the tasks the error came from
        return [line]

    def screen(self, columns: int, rows: int | None, now: datetime) -> list[Line]:
        if self._help and rows is not None:
            title: Line = [("class:title", f"{self.view.workflow_id}: keys")]
            return box(title, help_lines(WATCH_HELP), columns)[:rows]
        self._rows = rows or self._rows
        lines, self._top = watch_picture(
            self.view,
            self.status,
            now,
            columns,
            location=self._source.location,
            status_only=self._status_only,
            rows=rows,
            top=self._top,
            footer=self.footer,
        )
        return lines

    @property
    def helping(self) -> bool:
        return self._help

    def press(self, key: str) -> bool:
        if self._help:
            self._help = False
            return False
        page = max(self._rows - 10, 1)
        moves = {
            "down": 1,
            "j": 1,
            "up": -1,
            "k": -1,
            "pagedown": page,
            " ": page,
            "pageup": -page,
            "b": -page,
            "home": -(1 << 30),
            "g": -(1 << 30),
            "end": 1 << 30,
            "G": 1 << 30,
        }
        if key in moves:
            self._top = max(0, min(self._top + moves[key], 1 << 30))
        elif key == "?":
            self._help = True
        return key in ("q", "escape")

    def close(self) -> None:
        self._feed.close()


class DashboardWatch:
    """Every workflow's latest record, as the dashboard shows it."""

    def __init__(self, source: Source, *, status_only: bool = False, as_json: bool = False) -> None:
        self._source = source
        self._feed = source.follow_all()
        self._status_only = status_only
        self._as_json = as_json
        self.entries: dict[str, WorkflowEntry] = {}
        self.present = True
        self._checked = time.monotonic()
        self._changed: dict[str, None] = {}
        self.ui = dashboard.DashboardUI()
        self.opened: WorkflowWatch | None = None  # the watch Enter opened, until Esc
        self._rows = 24

    def tick(self, timeout: float) -> bool:
        opened = self.opened.tick(0) if self.opened is not None else False
        return self._tick(timeout) or opened

    def _tick(self, timeout: float) -> bool:
        update = self._feed.poll(timeout)
        changed = bool(update.changed or update.removed) or update.present != self.present
        self.present = update.present
        for name in update.removed:
            self.entries.pop(name, None)
        for entry in update.changed:
            self.entries[entry.name] = entry
            self._changed[entry.name] = None
        if time.monotonic() - self._checked >= LIVENESS_INTERVAL:
            self._checked = time.monotonic()
            changed = self._refresh_liveness() or changed
        return changed

    def _refresh_liveness(self) -> bool:
        changed = False
        for name, entry in self.entries.items():
            record = entry.latest
            if record is None or record.status != RUNNING:
                continue
            status = self._source.status(record)
            if status != entry.status:
                self.entries[name] = replace(entry, status=status)
                self._changed[name] = None
                changed = True
        return changed

    def pace(self, interval: float) -> float:
        return self._feed.pace(interval)

    def outcome(self) -> int | None:
        statuses = [entry.status for entry in self.entries.values() if entry.latest is not None]
        if not statuses or any(status not in ENDED for status in statuses):
            return None
        return exitcodes.OK if all(s == COMPLETED for s in statuses) else exitcodes.WORKFLOW_FAILED

    def plain_lines(self, now: datetime) -> list[str]:
        lines = []
        for name in self._changed:
            entry = self.entries.get(name)
            if entry is None:
                continue
            if self._as_json:
                lines.append(json.dumps(ps_object(entry, now)))
            elif entry.latest is None:
                shown = f"{clock(now)}  {name}  {entry.status}  {entry.problem or ''}"
                lines.append(safe(shown))
            else:
                lines.append(
                    change_line(
                        entry.latest,
                        entry.status,
                        now,
                        status_only=self._status_only,
                        name=name,
                    )
                )
        self._changed.clear()
        return lines

    def screen(self, columns: int, rows: int | None, now: datetime) -> list[Line]:
        if self.opened is not None:
            return self.opened.screen(columns, rows, now)
        self._rows = rows or self._rows
        source = f"{self._source.kind} {self._source.location}"
        return dashboard.picture(
            list(self.entries.values()),
            self.ui,
            now,
            columns,
            rows,
            source=source,
            present=self.present,
        )

    def press(self, key: str) -> bool:
        if self.opened is not None:
            if key == "escape" and not self.opened.helping:
                self.opened.close()
                self.opened = None
                return False
            return self.opened.press(key) and key != "escape"
        listed = dashboard.shown(list(self.entries.values()), self.ui)
        self.ui, action = dashboard.press(self.ui, key, listed, dashboard.page_size(self._rows))
        if action == dashboard.OPEN and self.ui.selected is not None:
            self.opened = WorkflowWatch(self._source, self.ui.selected)
            self.opened.footer = "Esc back  " + WATCH_KEYS
            self.opened.tick(0)
        return action == dashboard.QUIT

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()
        self._feed.close()
