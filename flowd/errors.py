"""One exception class per failure; each builds its own message.

``RpcError`` subclasses become JSON-RPC error responses (their ``code`` is the wire code);
``StartupError`` subclasses stop the daemon before it serves, with one line on stderr.
"""

from __future__ import annotations

from typing import Any, ClassVar

from doeff_flow_core.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_A_DIRECTORY,
    PARSE_ERROR,
    ROOT_REFUSED,
    TOO_MANY_WATCHES,
    TRACE_UNREADABLE,
    UNKNOWN_ROOT,
    UNKNOWN_SUBSCRIPTION,
    UNKNOWN_WORKFLOW,
)


class RpcError(Exception):
    """A request that gets an error response instead of a result."""

    code: ClassVar[int] = INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None) -> None:
        self.message = message
        self.data = data
        super().__init__(message)


class ParseError(RpcError):
    code = PARSE_ERROR
    request_id = None  # never known: the response's id is null

    def __init__(self, detail: str) -> None:
        super().__init__(f"parse error: {detail}")


class InvalidRequest(RpcError):
    code = INVALID_REQUEST

    def __init__(self, reason: str, request_id: str | int | float | None = None) -> None:
        self.request_id = request_id  # answered with this id when the request had one
        super().__init__(f"invalid request: {reason}")


class LineTooLong(InvalidRequest):
    """A request line over the limit; the connection is closed after the answer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"line longer than {limit} bytes; closing the connection")


class MethodNotFound(RpcError):
    code = METHOD_NOT_FOUND

    def __init__(self, method: str) -> None:
        super().__init__(f"method not found: {method[:100]!r}")


class InvalidParams(RpcError):
    code = INVALID_PARAMS

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid params: {reason}")


class InternalError(RpcError):
    code = INTERNAL_ERROR

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"internal error: {type(error).__name__}: {str(error)[:200]}")


class UnknownWorkflow(RpcError):
    code = UNKNOWN_WORKFLOW

    def __init__(self, workflow_id: str, root: str | None) -> None:
        where = f" under {root}" if root is not None else ""
        super().__init__(
            f"unknown workflow {workflow_id!r}{where}", {"workflow_id": workflow_id, "root": root}
        )


class UnknownSubscription(RpcError):
    code = UNKNOWN_SUBSCRIPTION

    def __init__(self, subscription: str) -> None:
        super().__init__(
            f"unknown subscription {subscription[:100]!r}", {"subscription": subscription}
        )


class NotADirectory(RpcError):
    code = NOT_A_DIRECTORY

    def __init__(self, path: str, detail: str = "not a directory") -> None:
        super().__init__(f"{path}: {detail}", {"path": path})


class TraceUnreadable(RpcError):
    code = TRACE_UNREADABLE

    def __init__(self, workflow_id: str, path: str, error: OSError) -> None:
        detail = error.strerror or str(error)
        super().__init__(
            f"cannot read the trace of {workflow_id!r} ({path}): {detail}",
            {"workflow_id": workflow_id, "path": path},
        )


class TooManyWatches(RpcError):
    """A ``watch`` past a limit (``scope``: the connection's, or flowd's across all
    connections): refused before anything is made for it."""

    code = TOO_MANY_WATCHES
    CONNECTION: ClassVar[str] = "connection"
    FLOWD: ClassVar[str] = "flowd"

    def __init__(self, limit: int, scope: str) -> None:
        where = "on this connection" if scope == self.CONNECTION else "open in flowd"
        super().__init__(
            f"too many watches {where} (at most {limit}); unwatch some first",
            {"limit": limit, "scope": scope},
        )


class RootRefused(RpcError):
    """``roots.add`` of a directory flowd will not index; ``reason`` says why, in words
    the message repeats."""

    code = ROOT_REFUSED

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: refused: {reason}", {"path": path, "reason": reason})


class UnknownRoot(RpcError):
    code = UNKNOWN_ROOT

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not a root (not given, registered nor added)", {"path": path})


class RootsUnwritable(RpcError):
    """``roots.remove``: a list that would bring the root back cannot be rewritten; the
    root is still indexed."""

    code = INTERNAL_ERROR

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(f"{path}: not removed: {error.strerror or error}", {"path": path})


class StartupError(Exception):
    """The daemon cannot start; reported as one line on stderr."""


class SocketInUse(StartupError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: another flowd is answering on this socket; not taking it over")


class SocketPathTaken(StartupError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: exists and is not a socket; not removing it")


class SocketDirUnsafe(StartupError):
    """The socket's directory fails ``check_socket_dir`` (``reason`` says how): another
    user could answer in flowd's place there, or choose where its files land."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"socket directory {path}: {reason}; not listening there")


class SocketLockUnsafe(StartupError):
    """The socket's lock file is a symbolic link or not a regular file: never followed
    nor used."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}; not using it as the socket's lock")


class SocketUnavailable(StartupError):
    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        super().__init__(f"{path}: cannot listen: {error.strerror or error}")


class BadInheritedSocket(StartupError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"inherited socket (LISTEN_FDS) unusable: {reason}")


class WatcherUnavailable(StartupError):
    def __init__(self, error: OSError) -> None:
        super().__init__(f"--watcher inotify: {error.strerror or error}")


class OtlpSettingError(Exception):
    """The OpenTelemetry export is misconfigured: flowd serves on, exporting nothing.

    ``endpoint`` is the URL as given (None when there is none), for ``ping`` and ``stats``.
    """

    def __init__(self, message: str, endpoint: str | None) -> None:
        self.endpoint = endpoint
        super().__init__(message)


class InvalidOtlpEndpoint(OtlpSettingError):
    def __init__(self, url: str, source: str, reason: str) -> None:
        super().__init__(f"{source} {url!r} is not a usable URL: {reason}", url)


class InvalidOtlpHeader(OtlpSettingError):
    def __init__(self, name: str | None, source: str, reason: str, endpoint: str | None) -> None:
        # a header's value may be a secret: only its name is repeated, when it has one
        which = f"header {name[:100]!r}" if name is not None else "a header"
        super().__init__(f"{source}: {which}: {reason}", endpoint)


class OtlpHeaderWithoutEndpoint(OtlpSettingError):
    def __init__(self) -> None:
        super().__init__(
            "--otlp-header given without --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)", None
        )


class SweepFailed(Exception):
    """Ending a run whose writer is gone failed; the other runs were swept all the same."""

    def __init__(self, path: str, error: Exception) -> None:
        self.error = error
        super().__init__(f"{path}: {type(error).__name__}: {error}")


class UnitsError(Exception):
    """``flowd install-units`` cannot write the units; reported as one line on stderr."""


class UnitExists(UnitsError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: exists with other text; not replacing it without --force")


class UnitUnwritable(UnitsError):
    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        super().__init__(f"{path}: cannot write: {error.strerror or error}")


class UnitPathUnusable(UnitsError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r} {reason}: a unit file cannot name it")


class UnitProgramUnsafe(UnitsError):
    def __init__(self, program: str, problem: str) -> None:
        super().__init__(
            f"--system: {program} would run for every user, but {problem}; "
            "install flowd where only root can change it, or use --user"
        )
