"""What a watch knows about one workflow: the latest record of each live task of the
current run, folded from a feed's updates. Pure: records in, a new state out.

Tasks: ``task`` None is the root, ints are spawned tasks. A record from a new ``run``
starts over; a terminal record ends the run's tasks, and a record's ``finished_tasks``
end those tasks. Traces written before that field existed do not say when a task ends,
so a spawned task with no record for TASK_FORGET_AFTER seconds before the newest record
is also taken as finished and dropped, and at most MAX_TASKS tasks (the most recently
active) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from doeff_flow_core import LiveTrace
from flowctl.sources.base import FeedUpdate

TASK_FORGET_AFTER = 60.0
MAX_TASKS = 8


@dataclass(frozen=True)
class WorkflowView:
    workflow_id: str
    present: bool = False
    run: str | None = None
    latest: LiveTrace | None = None  # the newest record of the run, any task
    root: LiveTrace | None = None  # the newest record of the root task
    tasks: tuple[LiveTrace, ...] = ()  # the newest record of each live spawned task, by id
    skipped: int = 0  # malformed lines met so far

    @property
    def finished(self) -> bool:
        return self.latest is not None and self.latest.is_terminal


def fold(view: WorkflowView, update: FeedUpdate) -> WorkflowView:
    """``view`` with ``update`` applied."""
    if update.reset or not update.present:
        view = WorkflowView(view.workflow_id, skipped=view.skipped)
    if not update.records:
        if update.present == view.present and not update.skipped:
            return view  # unchanged: the same object, so callers can tell
        return replace(view, present=update.present, skipped=view.skipped + update.skipped)
    run, latest, root = view.run, view.latest, view.root
    tasks = {record.task: record for record in view.tasks if record.task is not None}
    for record in update.records:
        if latest is None or record.run != run:
            run, root = record.run, None
            tasks.clear()
        latest = record
        for finished, _ in record.finished_tasks:
            tasks.pop(finished, None)
        if record.task is None:
            root = record
        else:
            tasks[record.task] = record
        if record.is_terminal:
            tasks.clear()
    return WorkflowView(
        workflow_id=view.workflow_id,
        present=True,
        run=run,
        latest=latest,
        root=root,
        tasks=_live_tasks(tasks, latest),
        skipped=view.skipped + update.skipped,
    )


def _live_tasks(tasks: dict[int, LiveTrace], latest: LiveTrace | None) -> tuple[LiveTrace, ...]:
    if latest is None:
        return ()
    recent = [
        record
        for record in tasks.values()
        if (latest.updated_at - record.updated_at).total_seconds() <= TASK_FORGET_AFTER
    ]
    recent.sort(key=lambda record: record.step, reverse=True)
    kept = recent[:MAX_TASKS]
    kept.sort(key=lambda record: record.task or 0)
    return tuple(kept)
