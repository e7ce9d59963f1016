"""One exception class per failure; each builds its own message."""

from __future__ import annotations

import errno


class InvalidWorkflowId(ValueError):
    """A workflow id that could not safely name a directory."""

    def __init__(self, workflow_id: object, reason: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"invalid workflow id {workflow_id!r}: {reason} "
            "(ids are 1-255 characters of A-Z, a-z, 0-9, '_' and '-')"
        )


# What a failure to write means for the one who reads the message.
_WRITE_HINTS = {
    errno.EFBIG: "the process's file size limit, ulimit -f, is reached",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
}


class TraceDirUnwritable(OSError):
    """The trace directory cannot be created or written; raised before the workflow runs.
    ``errno`` is the cause's (``ENOSPC``, ``EFBIG``, ``EACCES`` ...) when it had one."""

    def __init__(self, path: object, cause: BaseException) -> None:
        self.path = path
        number = getattr(cause, "errno", None)
        detail = getattr(cause, "strerror", None) or str(cause)
        hint = _WRITE_HINTS.get(number) if isinstance(number, int) else None
        reason = f"{detail} ({hint})" if hint else detail
        super().__init__(f"cannot write traces under {path}: {reason}")
        self.errno = number


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


class WorkflowBusy(RuntimeError):
    """Another process is tracing the same workflow id now."""

    def __init__(self, workflow_id: str, holder: str) -> None:
        self.workflow_id = workflow_id
        self.holder = holder
        who = f"process {holder}" if holder.isdigit() else "another process"
        super().__init__(
            f"workflow {workflow_id} is already being traced by {who}; "
            "use another workflow id, or wait for that run to end"
        )


class BadTraceSetting(ValueError):
    """A rotation setting that is not a whole number of at least 0."""

    def __init__(self, name: str, value: object) -> None:
        self.name = name
        super().__init__(f"{name} must be a whole number >= 0, not {value!r}")


class SymlinkRefused(OSError):
    """A trace file, part, lock or workflow directory that is a symbolic link: it could
    lead anywhere, so it is never followed."""

    def __init__(self, path: object) -> None:
        super().__init__(errno.ELOOP, "a symbolic link (not followed)", str(path))


class NotRegularFile(OSError):
    """A trace file, part or lock that is not a regular file (a FIFO would block a reader,
    a device could be endless): reported, never read."""

    def __init__(self, path: object, kind: str) -> None:
        self.kind = kind
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", str(path))


class ForeignOwner(OSError):
    """A workflow directory or trace file owned by another user: tracing into it would
    hand that user the workflow's records, or write into their files."""

    def __init__(self, path: object, uid: int) -> None:
        self.uid = uid
        super().__init__(errno.EPERM, f"owned by another user (uid {uid})", str(path))


class SharedTraceDir(OSError):
    """A trace directory that other users can write and that has no sticky bit: any of
    them could swap a workflow's files."""

    def __init__(self, path: object, mode: int) -> None:
        self.mode = mode
        super().__init__(
            errno.EPERM,
            f"writable by other users without the sticky bit (mode {mode:o})",
            str(path),
        )


class UnsafeSocketDir(OSError):
    """flowd's socket directory when another user could control it (a symbolic link, not a
    directory, someone else's, or open to group or others): a server listening there
    could be anyone's, and a file created there could land where they chose."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(errno.EPERM, reason, str(path))

    def __str__(self) -> str:
        return f"socket directory {self.path}: {self.reason}"
