"""Trace lines and files as the tests write and read them, and synthetic records."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from doeff_flow_core import LiveTrace, TraceFrame


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete line of a JSON Lines file, parsed.

    Lines end at "\n" only: ``str.splitlines`` would also split at U+0085 and U+2028,
    which JSON strings may hold unescaped.
    """
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a trace, parsed (lines end at \\n only)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def raw_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def steps_of(items: list[dict[str, Any]]) -> list[int]:
    return [item["step"] for item in items]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def last_record(path: Path) -> dict[str, object] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    complete = [line for line in text.splitlines(keepends=True) if line.endswith("\n")]
    return json.loads(complete[-1]) if complete else None


def line_of(function: Callable[..., object], marker: str) -> int:
    """The file line number of the first line of ``function``'s source containing ``marker``."""
    lines, first = inspect.getsourcelines(inspect.unwrap(function))
    for offset, text in enumerate(lines):
        if marker in text:
            return first + offset
    raise AssertionError(f"{marker!r} not in the source of {function!r}")


def record_line(workflow_id: str = "wf-x", step: int = 1, **fields: Any) -> str:
    """One trace line as the core writes it, fields overridable."""
    record: dict[str, Any] = {
        "workflow_id": workflow_id,
        "step": step,
        "status": "running",
        "current_effect": "Get('k')",
        "trace": [{"function": "main", "file": "/w/flow.py", "line": 3, "code": None}],
        "started_at": "2026-01-01T12:00:00.000000+00:00",
        "updated_at": "2026-01-01T12:00:01.000000+00:00",
        "error": None,
        "result": None,
        "last_slog": None,
        "task": None,
        "pid": None,
        "host": None,
        "run": "run1",
        "trace_exact": True,
        "pid_start": None,
    }
    record.update(fields)
    return json.dumps(record) + "\n"


def put_trace(trace_dir: Path, workflow_id: str, text: str | bytes) -> Path:
    path = trace_dir / workflow_id / "trace.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


# -- synthetic records: calls told apart by their ids ---------------------------------------

PAGES = 4
PAGES_FILE = "/w/pages.py"


def paged_records(
    calls: bool = True, args: bool = True, workflow_id: str = "wf-pages"
) -> list[LiveTrace]:
    """``for page in range(4): yield fetch_page("apac", page)``: four calls of one function
    from one line of ``main``, with no effect of main's own between them (two effects each,
    at lines 20 and 21), then the run completes. Each call has its own ``call`` id and
    ``args`` unless left out."""
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    main = TraceFrame(
        "main",
        PAGES_FILE,
        12,
        "yield fetch_page('apac', page)",
        call=1 if calls else None,
        args="region='apac'" if args else None,
    )
    out: list[LiveTrace] = []
    for page in range(PAGES):
        for line in (20, 21):
            fetch = TraceFrame(
                "fetch_page",
                PAGES_FILE,
                line,
                None,
                call=page + 2 if calls else None,
                args=f"region='apac', page={page}" if args else None,
            )
            step = len(out) + 1
            out.append(
                LiveTrace(
                    workflow_id=workflow_id,
                    step=step,
                    status="running",
                    current_effect=f"Get('page-{page}-{line}')",
                    trace=(main, fetch),
                    started_at=start,
                    updated_at=start + timedelta(seconds=step),
                    run="r-pages",
                )
            )
    end = start + timedelta(seconds=len(out) + 1)
    out.append(
        LiveTrace(workflow_id, len(out) + 1, "completed", None, (), start, end, run="r-pages")
    )
    return out


def page_args(page: int) -> str:
    return f"region='apac', page={page}"
