"""Which calls a run's failure went through, told from its raise site when the writer
did not say (the 3.11 tracer): the task that raised, and the tasks that awaited it."""

from __future__ import annotations

from collections.abc import Mapping

from doeff_flow_core.records import TraceFrame
from doeff_flow_core.timeline.opencall import OpenCall


def raising_task(
    stacks: Mapping[int | None, list[OpenCall]],
    ending: Mapping[int, tuple[float, int]],
    records: int,
    times: Mapping[int | None, float],
    raise_site: tuple[TraceFrame, ...],
) -> int | None:
    """The task whose open calls reach deepest into the raise site (outermost first,
    through the tasks that awaited it); a tie goes to a task that had finished (see
    ``rank``), then to the one heard from last. None (the root task) when none matches.
    ``ending``: the tasks said to have finished, as (when, the run's ``records`` count
    when said); ``times``: when each task was last heard from."""
    best: tuple[int, int, int, float] = (0, 0, 0, 0.0)
    chosen: int | None = None
    # Finished tasks first: the first the failed record names (the others it names
    # may have been unwound because of it), then those named before, latest first.
    named = sorted(ending.items(), key=lambda item: records - item[1][1])
    rank = {task: len(named) - i for i, (task, _when) in enumerate(named)}
    for task, stack in stacks.items():
        if task is None or not stack:
            continue
        depth, matched = reach(stack, raise_site)
        if not matched:
            continue
        score = (depth, matched, rank.get(task, 0), times.get(task, 0.0))
        if score > best:
            best, chosen = score, task
    return chosen


def chain_of(
    stacks: Mapping[int | None, list[OpenCall]], links: Mapping[int, int], task: int | None
) -> set[int | None]:
    """``task`` and each task whose call spawned it, up to the root task."""
    tasks: set[int | None] = {None}
    owner = {span.span_id: t for t, stack in stacks.items() for span in stack}
    while task is not None and task not in tasks:
        tasks.add(task)
        spawner = links.get(task)
        task = owner.get(spawner) if spawner is not None else None
    return tasks


def reach(stack: list[OpenCall], raise_site: tuple[TraceFrame, ...]) -> tuple[int, int]:
    """How deep into the raise site a task's open calls reach, and how many of them
    match it (its outermost call matched at some depth, then call by call)."""
    outer = stack[0]
    for start, frame in enumerate(raise_site):
        if frame.function == outer.function and frame.file == outer.file:
            matched = 1
            for span, deeper in zip(stack[1:], raise_site[start + 1 :]):  # noqa: B905
                if span.function != deeper.function or span.file != deeper.file:
                    break
                matched += 1
            return start + matched, matched
    return 0, 0
