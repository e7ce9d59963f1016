"""Where traces live: ``<trace_dir>/<workflow_id>/trace.jsonl``, rotated into
``trace.jsonl.1`` (newest) ... ``trace.jsonl.N``, with ``writer.lock`` beside them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from doeff_flow_core.ids import validate_workflow_id

TRACE_DIR_ENV: Final = "DOEFF_FLOW_TRACE_DIR"
DEFAULT_TRACE_DIR: Final = ".doeff-flow"
TRACE_FILE_NAME: Final = "trace.jsonl"
LOCK_FILE_NAME: Final = "writer.lock"
MAX_PARTS: Final = 1000  # rotated parts looked at, at most


def default_trace_dir() -> Path:
    """``$DOEFF_FLOW_TRACE_DIR`` if set, else ``.doeff-flow`` in the current directory."""
    return Path(os.environ.get(TRACE_DIR_ENV) or DEFAULT_TRACE_DIR)


def resolve_trace_dir(trace_dir: str | os.PathLike[str] | None) -> Path:
    return default_trace_dir() if trace_dir is None else Path(trace_dir)


def workflow_dir(trace_dir: str | os.PathLike[str] | None, workflow_id: str) -> Path:
    """The directory of one workflow (InvalidWorkflowId before any path is built)."""
    return resolve_trace_dir(trace_dir) / validate_workflow_id(workflow_id)


def trace_file(trace_dir: str | os.PathLike[str] | None, workflow_id: str) -> Path:
    return workflow_dir(trace_dir, workflow_id) / TRACE_FILE_NAME


def part_name(number: int) -> str:
    """``trace.jsonl`` (0) or its ``number``-th newest rotated part."""
    return TRACE_FILE_NAME if number == 0 else f"{TRACE_FILE_NAME}.{number}"


def part_number(name: str) -> int | None:
    """The inverse of ``part_name``: 0 for ``trace.jsonl``, N for ``trace.jsonl.N``
    (1 <= N <= MAX_PARTS, no leading zero), None for any other name."""
    if name == TRACE_FILE_NAME:
        return 0
    if not name.startswith(TRACE_FILE_NAME + "."):
        return None
    digits = name[len(TRACE_FILE_NAME) + 1 :]
    if not digits.isascii() or not digits.isdigit() or digits[0] == "0" or len(digits) > 4:
        return None
    number = int(digits)
    return number if number <= MAX_PARTS else None
