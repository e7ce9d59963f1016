"""Which traced run owns the task the scheduler runs now, from doeff's scheduler events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from doeff_flow_core.encode import TaskEvent
from doeff_flow_core.tracing.monitor import dispatcher, monitoring_available

if TYPE_CHECKING:
    from doeff_flow_core.tracing.observer import TraceObserver


class _Scope:
    """One VM's scheduler on a thread: the task running now, and which traced runs own
    which tasks (the innermost last). A traced run inside another one's body runs a VM
    of its own, with tasks numbered from the start again: a scope of its own."""

    def __init__(self, entry: object) -> None:
        self.entry = entry  # the frame that runs this VM
        self.task: int | None = None
        self.owners: dict[int | None, list[TraceObserver]] = {}
        self.runs = 0

    def owner(self, task: int | None) -> TraceObserver | None:
        owners = self.owners.get(task)
        return owners[-1] if owners else None


class _Thread:
    def __init__(self) -> None:
        self.attached: list[TraceObserver] = []
        self.scopes: list[_Scope] = []
        self.task: int | None = None  # the last task entered before any run started


class _TaskRouting:
    """Routes the scheduler's task events to the traced run that owns the task: the
    task a run starts in and every task spawned from its tasks.

    doeff's scheduler trace sink is one per process; a sink installed before ours is
    still called.
    """

    def __init__(self) -> None:
        self._threads: dict[int, _Thread] = {}
        self._previous: Callable[[dict[str, object]], None] | None = None
        self._installed = False
        self._lock = threading.Lock()

    def attach(self, observer: TraceObserver) -> None:
        """Before the run: from now on this thread's task events are followed."""
        with self._lock:
            thread = self._threads.setdefault(threading.get_ident(), _Thread())
            thread.attached.append(observer)
            if not self._installed:
                from doeff_core_effects import scheduler

                self._previous = scheduler.scheduler_trace_sink()
                scheduler.set_scheduler_trace(self._sink)
                self._installed = True

    def detach(self, observer: TraceObserver) -> None:
        with self._lock:
            for ident, thread in list(self._threads.items()):
                if observer in thread.attached:
                    thread.attached.remove(observer)
                    if not thread.attached:
                        del self._threads[ident]
            if not self._threads and self._installed:
                from doeff_core_effects import scheduler

                scheduler.set_scheduler_trace(self._previous)
                self._installed = False

    def claim(self, observer: TraceObserver, entry: object) -> None:
        """The run starts, in the VM run from ``entry``: it owns the task running now."""
        thread = self._threads.get(threading.get_ident())
        if thread is None:
            return
        if not thread.scopes or thread.scopes[-1].entry is not entry:
            # The first run here starts in the task entered last; a VM run inside a
            # traced body starts in its own root task (None).
            scope = _Scope(entry)
            if not thread.scopes:
                scope.task = thread.task
            thread.scopes.append(scope)
        scope = thread.scopes[-1]
        scope.runs += 1
        scope.owners.setdefault(scope.task, []).append(observer)
        self._enter(scope, scope.task)

    def release(self, observer: TraceObserver) -> None:
        """The run ended: its tasks are nobody's; a VM with no traced run left is gone."""
        thread = self._threads.get(threading.get_ident())
        if thread is None or not thread.scopes:
            return
        scope = thread.scopes[-1]
        for owners in scope.owners.values():
            while observer in owners:
                owners.remove(observer)
        scope.runs -= 1
        if scope.runs <= 0:
            thread.scopes.pop()
        if thread.scopes:
            outer = thread.scopes[-1]
            self._enter(outer, outer.task)
        elif monitoring_available():
            dispatcher().set_current(None)

    def _enter(self, scope: _Scope, task: int | None) -> None:
        owner = scope.owner(task)
        if owner is not None:
            owner.enter_task(task)
        if monitoring_available():
            dispatcher().set_current(owner._context if owner is not None else None)

    def _sink(self, event: dict[str, object]) -> None:
        try:
            self._route(event)
        finally:
            previous = self._previous
            if previous is not None:
                previous(event)

    def _route(self, event: dict[str, object]) -> None:
        thread = self._threads.get(threading.get_ident())
        if thread is None:
            return
        kind = event.get("event")
        tid = event.get("tid")
        task = tid if type(tid) is int else None
        if not thread.scopes:
            if kind == "task-enter":
                thread.task = task
            return
        scope = thread.scopes[-1]  # the innermost VM is the one running
        if kind == "task-enter":
            scope.task = task
            self._enter(scope, task)
        elif kind == "spawned" and type(tid) is int:
            parent = event.get("parent")
            parent_task = parent if type(parent) is int else None
            owner = scope.owner(parent_task)
            if owner is not None:
                scope.owners.setdefault(task, []).append(owner)
                if owner._context is not None:
                    owner._context.new_tasks.add(task)
                # In the buffer, in order among the effects: timelines link a task to the
                # call that spawned it.
                owner._buffer.append(TaskEvent(tid, parent_task))
        elif kind == "task-leave" and event.get("effect") == "TaskCompleted":
            owner = scope.owner(task)
            if owner is not None and type(tid) is int:
                owner._buffer.append(TaskEvent(tid, finished_at=time.time()))
            scope.owners.pop(task, None)


_task_routing = _TaskRouting()
