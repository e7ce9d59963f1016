"""One exception class per failure, each building its own message and naming its exit code."""

from __future__ import annotations

from flowctl import exitcodes


class FlowctlError(Exception):
    """A failure reported as one line on stderr and an exit code."""

    exit_code: int = exitcodes.INTERNAL


class UsageError(FlowctlError):
    """Arguments that do not form a command."""

    exit_code = exitcodes.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BadWorkflowId(FlowctlError):
    """A workflow id that could never name a trace (refused before any path is built)."""

    exit_code = exitcodes.USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class TraceDirMissing(FlowctlError):
    exit_code = exitcodes.NOT_FOUND

    def __init__(self, location: str, detail: str = "does not exist") -> None:
        self.location = location
        super().__init__(
            f"trace directory {location} {detail} (use --trace-dir DIR or set DOEFF_FLOW_TRACE_DIR)"
        )


class WorkflowNotFound(FlowctlError):
    exit_code = exitcodes.NOT_FOUND

    def __init__(self, workflow_id: str, location: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"no workflow {workflow_id!r} in {location}")


class WorkflowLinked(FlowctlError):
    """A workflow directory (or its trace) that is a symbolic link: never followed, so a
    link cannot lead flowctl outside the trace directory."""

    exit_code = exitcodes.NOT_FOUND

    def __init__(self, workflow_id: str, location: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"{workflow_id!r} in {location} is a symbolic link; flowctl does not follow it"
        )


class TraceUnreadable(FlowctlError):
    """A trace that exists but holds nothing readable, or cannot be opened."""

    exit_code = exitcodes.BAD_TRACE

    def __init__(self, workflow_id: str, detail: str, *, io_error: bool = False) -> None:
        self.workflow_id = workflow_id
        if io_error:
            self.exit_code = exitcodes.UNAVAILABLE
        super().__init__(f"{workflow_id}: {detail}")


class OutputUnwritable(FlowctlError):
    """An export's destination that cannot be written; no partial file is left behind."""

    exit_code = exitcodes.CANNOT_WRITE

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"cannot write {path}: {detail}")


class SourceUnavailable(FlowctlError):
    """The data source as a whole cannot be read (permissions, I/O)."""

    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, location: str, detail: str) -> None:
        super().__init__(f"cannot read {location}: {detail}")


class DaemonUnavailable(FlowctlError):
    """flowd cannot be reached, or stopped answering (connect, send, receive, timeout)."""

    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, socket_path: str, detail: str) -> None:
        self.socket_path = socket_path
        self.detail = detail
        super().__init__(f"flowd at {socket_path}: {detail}")


class DaemonError(FlowctlError):
    """An error answer from flowd that flowctl has no meaning for (a protocol mismatch)."""

    def __init__(self, method: str, code: int, message: str, data: object = None) -> None:
        self.method = method
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"flowd answered {method} with error {code}: {message}")


class BadProgramReference(FlowctlError):
    """``run``: a reference that is malformed or names something that is not a program."""

    exit_code = exitcodes.USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class ProgramNotFound(FlowctlError):
    """``run``: a program whose module or attribute does not exist."""

    exit_code = exitcodes.NOT_FOUND

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class ProgramImportFailed(FlowctlError):
    """``run``: the program's module raised while it was imported; nothing was traced."""

    exit_code = exitcodes.WORKFLOW_FAILED

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class WorkflowRunFailed(FlowctlError):
    """``run``: the workflow ended with an exception (its trace says ``failed``)."""

    exit_code = exitcodes.WORKFLOW_FAILED

    def __init__(self, workflow_id: str, error: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"workflow {workflow_id} failed: {error}")


class TraceNotWritable(FlowctlError):
    """``run``: the trace cannot be created; the workflow did not start."""

    exit_code = exitcodes.CANNOT_WRITE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class WorkflowInUse(FlowctlError):
    """``run``: another process is tracing that workflow id now; the workflow did not start."""

    exit_code = exitcodes.UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class DaemonUntrusted(DaemonUnavailable):
    """A socket flowctl will not use: its directory is not this user's own private one,
    or the server on it runs as another user (an attack or a misconfiguration). Nothing
    is sent to it; flowctl says so in one line, even without ``--verbose``, and reads
    the trace files."""

    def __init__(self, socket_path: str, detail: str) -> None:
        super().__init__(socket_path, f"not trusted: {detail}; nothing sent to it")


class AnswerTooLong(DaemonUnavailable):
    """More from flowd than flowctl reads: a line past its bound, or notifications past
    theirs while an answer is awaited. The connection is dropped as the bound is passed,
    so what was sent is never held whole."""

    def __init__(self, socket_path: str, limit: int, what: str = "one line") -> None:
        self.limit = limit
        super().__init__(
            socket_path, f"sent more than {limit >> 20} MiB in {what}; connection dropped"
        )
