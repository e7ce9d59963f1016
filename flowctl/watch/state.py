"""What a watch knows about one workflow: the latest record of each live task of the
current run, folded from a feed's updates. Pure: records in, a new state out.

Tasks: ``task`` None is the root, ints are spawned tasks. A record from a new ``run``
starts over; a terminal record ends the run's tasks, and a record's ``finished_tasks``
end those tasks. Every live task is kept, however many: the stuck ones are the ones a
user most wants. Traces written before the tracer recorded task events (``spawned``,
``finished_tasks``) do not say when a task ends, so in those alone a spawned task with
no record for TASK_FORGET_AFTER seconds before the newest record is taken as finished.

Tasks are ordered longest-idle first (oldest last record), then by id. Each keeps its
own last slog (a record's ``last_slog`` is the workflow's, whichever task wrote it: a
slog belongs to the task of the record where it first appears). When the run fails,
``failed_task`` is the task the error came from, when the records can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from doeff_flow_core import LiveTrace
from doeff_flow_core.records import FAILED, SlogLine
from flowctl.sources.base import FeedUpdate

TASK_FORGET_AFTER: Final = 60.0
KEEP_FINISHED: Final = 64  # ended tasks remembered, to tell which one a failure came from


@dataclass(frozen=True)
class WorkflowView:
    workflow_id: str
    present: bool = False
    run: str | None = None
    latest: LiveTrace | None = None  # the newest record of the run, any task
    root: LiveTrace | None = None  # the newest record of the root task
    tasks: tuple[LiveTrace, ...] = ()  # the newest record of each live spawned task
    skipped: int = 0  # malformed lines met so far
    own_slogs: tuple[tuple[int, SlogLine], ...] = ()  # (task, its own last slog), live or ended
    task_events: bool = False  # the run's records say when tasks start and end
    ended: tuple[LiveTrace, ...] = ()  # the last record of tasks that ended, newest last
    failed_task: LiveTrace | None = None  # the last record of the task a failure came from

    @property
    def finished(self) -> bool:
        return self.latest is not None and self.latest.is_terminal

    def slog_of(self, task: int) -> SlogLine | None:
        """The last slog ``task`` itself wrote."""
        return dict(self.own_slogs).get(task)


def fold(view: WorkflowView, update: FeedUpdate) -> WorkflowView:
    """``view`` with ``update`` applied."""
    if update.reset or not update.present:
        view = WorkflowView(view.workflow_id, skipped=view.skipped)
    if not update.records:
        if update.present == view.present and not update.skipped:
            return view  # unchanged: the same object, so callers can tell
        return replace(view, present=update.present, skipped=view.skipped + update.skipped)
    run, latest, root = view.run, view.latest, view.root
    events, failed = view.task_events, view.failed_task
    tasks = {record.task: record for record in view.tasks if record.task is not None}
    slogs = dict(view.own_slogs)
    ended = {record.task: record for record in view.ended if record.task is not None}
    for record in update.records:
        if latest is None or record.run != run:
            run, root, events, failed = record.run, None, False, None
            tasks.clear()
            slogs.clear()
            ended.clear()
        previous_slog = latest.last_slog if latest is not None and latest.run == run else None
        latest = record
        events = events or bool(record.spawned or record.finished_tasks)
        for finished, _ in record.finished_tasks:
            _end(tasks, ended, finished)
        if record.task is None:
            root = record
        else:
            tasks[record.task] = record
            ended.pop(record.task, None)
            if record.last_slog is not None and record.last_slog != previous_slog:
                slogs[record.task] = record.last_slog
        if record.is_terminal:
            if record.status == FAILED:
                failed = failed_task(record, tasks, ended)
            for task in list(tasks):
                _end(tasks, ended, task)
    live = _live_tasks(tasks, latest, events)
    kept = {record.task for record in live} | set(ended)  # an ended task's slog: a failure's
    return WorkflowView(
        workflow_id=view.workflow_id,
        present=True,
        run=run,
        latest=latest,
        root=root,
        tasks=live,
        skipped=view.skipped + update.skipped,
        own_slogs=tuple((task, slog) for task, slog in slogs.items() if task in kept),
        task_events=events,
        ended=tuple(ended.values())[-KEEP_FINISHED:],
        failed_task=failed,
    )


def _end(tasks: dict[int, LiveTrace], ended: dict[int, LiveTrace], task: int) -> None:
    record = tasks.pop(task, None)
    if record is not None:
        ended.pop(task, None)
        ended[task] = record  # insertion order: the newest last
        while len(ended) > KEEP_FINISHED:
            del ended[next(iter(ended))]


def failed_task(
    terminal: LiveTrace, live: dict[int, LiveTrace], ended: dict[int, LiveTrace]
) -> LiveTrace | None:
    """The spawned task ``terminal``'s error came from: the one whose last record was in
    the innermost function it was raised at (the same invocation when the records carry
    call ids); among several, the one that ended last (a failing task ends), else none."""
    if not terminal.trace:
        return None
    inner = terminal.trace[-1]

    def matches(record: LiveTrace) -> bool:
        for frame in record.trace:
            if inner.call is not None and frame.call is not None:
                if frame.call == inner.call:
                    return True
            elif frame.function == inner.function and frame.file == inner.file:
                return True
        return False

    finished = [record for record in ended.values() if matches(record)]
    if finished:
        return finished[-1]
    running = [record for record in live.values() if matches(record)]
    return running[0] if len(running) == 1 else None


def _live_tasks(
    tasks: dict[int, LiveTrace], latest: LiveTrace | None, events: bool
) -> tuple[LiveTrace, ...]:
    if latest is None:
        return ()
    kept = [
        record
        for record in tasks.values()
        if events or (latest.updated_at - record.updated_at).total_seconds() <= TASK_FORGET_AFTER
    ]
    kept.sort(key=lambda record: (record.updated_at, record.task or 0))
    return tuple(kept)
