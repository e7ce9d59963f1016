"""One exception class per failure; each builds its own message."""

from __future__ import annotations


class InvalidWorkflowId(ValueError):
    """A workflow id that could not safely name a directory."""

    def __init__(self, workflow_id: object, reason: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"invalid workflow id {workflow_id!r}: {reason} "
            "(ids are 1-255 characters of A-Z, a-z, 0-9, '_' and '-')"
        )


class TraceDirUnwritable(OSError):
    """The trace directory cannot be created or written; raised before the workflow runs."""

    def __init__(self, path: object, cause: BaseException) -> None:
        self.path = path
        detail = getattr(cause, "strerror", None) or str(cause)
        super().__init__(f"cannot write traces under {path}: {detail}")


class MalformedRecord(ValueError):
    """A trace line that is not a valid record."""

    def __init__(self, reason: str, line_number: int | None = None) -> None:
        self.reason = reason
        self.line_number = line_number
        where = f"line {line_number}: " if line_number is not None else ""
        super().__init__(f"{where}malformed trace record: {reason}")


class WorkflowFailed(RuntimeError):
    """Raised by ``WorkflowResult.unwrap`` when the workflow ended with an exception."""

    def __init__(self, workflow_id: str, error: BaseException) -> None:
        self.workflow_id = workflow_id
        self.error = error
        super().__init__(f"workflow {workflow_id} failed: {type(error).__name__}: {error}")
