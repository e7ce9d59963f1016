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
from flowctl.render.box import Line, dashboard, watch_box
from flowctl.render.text import change_line, ps_object, waiting_line
from flowctl.render.timefmt import clock
from flowctl.sources.base import Source, WorkflowEntry
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

    def screen(self, columns: int, now: datetime) -> list[Line]: ...

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
        return [
            change_line(
                record, status, now, status_only=self._status_only, name=self.view.workflow_id
            )
        ]

    def screen(self, columns: int, now: datetime) -> list[Line]:
        return watch_box(
            self.view,
            self.status,
            now,
            columns,
            location=self._source.location,
            status_only=self._status_only,
        )

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

    def tick(self, timeout: float) -> bool:
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

    def screen(self, columns: int, now: datetime) -> list[Line]:
        source = f"{self._source.kind} {self._source.location}"
        entries = sorted(self.entries.values(), key=lambda e: e.name)
        return dashboard(entries, now, columns, source=source, present=self.present)

    def close(self) -> None:
        self._feed.close()
