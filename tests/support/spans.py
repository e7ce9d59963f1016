"""Spans built by hand, for tests of what consumes them (profiles, flame graphs)."""

from __future__ import annotations

from doeff_flow_core.timeline.spans import CALL, OK, WORKFLOW, Span


def span(
    span_id: int,
    parent: int | None,
    name: str,
    start: float,
    end: float,
    *,
    task: int | None = None,
    depth: int = 1,
    spawned_by: int | None = None,
    waits: tuple[tuple[str, float], ...] = (),
    run: str = "r1",
    site: tuple[str, int] | None = None,
) -> Span:
    return Span(
        workflow_id="wf",
        run=run,
        span_id=span_id,
        parent_id=parent,
        kind=WORKFLOW if parent is None else CALL,
        name="wf" if parent is None else name,
        task=task,
        file=None if parent is None else "/w/flow.py",
        line=None if parent is None else 10 * span_id,
        start=start,
        end=end,
        status=OK,
        first_step=1,
        last_step=1,
        spawned_by=spawned_by,
        depth=0 if parent is None else depth,
        waits=waits,
        site_file=site[0] if site else None,
        site_line=site[1] if site else None,
    )
