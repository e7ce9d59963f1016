"""Workflow ids: checked before any path is built from one."""

from __future__ import annotations

import re

from doeff_flow_core.errors import InvalidWorkflowId

MAX_ID_LENGTH = 255
_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def validate_workflow_id(workflow_id: object) -> str:
    """``workflow_id`` if it matches ``[A-Za-z0-9_-]{1,255}``, else InvalidWorkflowId."""
    if not isinstance(workflow_id, str):
        kind = type(workflow_id).__name__
        raise InvalidWorkflowId(workflow_id, f"must be a string, not {kind}")
    if not workflow_id:
        raise InvalidWorkflowId(workflow_id, "must not be empty")
    if len(workflow_id) > MAX_ID_LENGTH:
        raise InvalidWorkflowId(workflow_id, f"longer than {MAX_ID_LENGTH} characters")
    if not _ID_CHARS.fullmatch(workflow_id):
        raise InvalidWorkflowId(workflow_id, "contains a character outside the allowed set")
    return workflow_id


def is_workflow_id(name: str) -> bool:
    return 0 < len(name) <= MAX_ID_LENGTH and _ID_CHARS.fullmatch(name) is not None
