"""Tracing a doeff program without changing it.

``doeff run --program pkg.mod.program --transform doeff_flow_core.traced`` hands the program
to ``traced`` and runs what it returns later, through an interpreter ``traced`` never sees.
So the traced program writes its own terminal record when it ends, and an exit hook closes
a trace whose program never got that far (the interpreter failed first, say): such a run is
recorded ``failed`` with ``ProgramNeverRan`` or ``ProgramDidNotFinish`` rather than left
without a terminal record, which readers would show as ``lost`` or as an empty trace. A
SIGTERM while the program runs is recorded as under ``run_workflow`` (``tracing.terminate``).

Also here, for ``doeff-flow run``: the default workflow id (the program's name and the time)
and ``load_program``, which finds a program by its ``pkg.mod:program`` reference.

``doeff`` is imported inside functions only: importing this module needs the standard
library alone.
"""

from __future__ import annotations

import atexit
import importlib
import os
import re
import sys
import threading
import time
from typing import Any

from doeff_flow_core.errors import WorkflowBusy
from doeff_flow_core.ids import MAX_ID_LENGTH
from doeff_flow_core.tracefiles.layout import resolve_trace_dir
from doeff_flow_core.tracing import TraceObserver
from doeff_flow_core.tracing.terminate import sigterm_recorded

WORKFLOW_ID_ENV = "DOEFF_FLOW_WORKFLOW_ID"
DEFAULT_NAME = "workflow"  # when the program has no name to give
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# Call -> DoFunction -> function, WithHandler/WithObserve -> body: how far to look for a name.
_NAME_DEPTH = 8
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class ProgramNeverRan(RuntimeError):
    """The terminal error of a trace whose program the process never started."""

    def __init__(self) -> None:
        super().__init__("the process ended before the traced program started")


class ProgramDidNotFinish(RuntimeError):
    """The terminal error of a trace whose program started but never returned or raised."""

    def __init__(self) -> None:
        super().__init__("the process ended before the traced program ran to its end")


class ProgramNotFound(LookupError):
    """A program reference whose module or attribute does not exist."""

    def __init__(self, reference: str, detail: str) -> None:
        self.reference = reference
        super().__init__(f"cannot find program {reference}: {detail}")


class ProgramImportFailed(ImportError):
    """A program's module that raised while it was imported."""

    def __init__(self, module: str, error: BaseException) -> None:
        self.module = module
        self.error = error
        super().__init__(f"importing {module} failed: {type(error).__name__}: {error}")


class NotAProgram(TypeError):
    """A reference to something that is not a doeff program (a @do function, say)."""

    def __init__(self, reference: str, value: object) -> None:
        self.reference = reference
        if callable(value):
            name = getattr(value, "__name__", "program")
            hint = f"; name the program it builds, e.g. `{name}_program = {name}(...)`"
        else:
            hint = ""
        super().__init__(f"{reference} is a {type(value).__name__}, not a doeff program{hint}")


class MalformedReference(ValueError):
    """A program reference that is not ``pkg.mod:program`` or ``pkg.mod.program``."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        super().__init__(
            f"not a program reference: {reference!r} (use pkg.mod:program or pkg.mod.program)"
        )


# -- workflow ids ---------------------------------------------------------------------


def program_name(program: object) -> str | None:
    """The name of the function behind ``program`` (a @do call's function, also under
    handlers), or None."""
    current = program
    for _ in range(_NAME_DEPTH):
        name = getattr(current, "__name__", None)
        if isinstance(name, str) and callable(current) and not isinstance(current, type):
            return name
        # A @do call keeps its DoFunction in ``function``, which keeps the Python function;
        # a program under handlers or an observer keeps it in ``body``.
        for attribute in ("function", "body"):
            try:
                inner = getattr(current, attribute)
            except Exception:  # doeff nodes raise on fields they do not have
                continue
            if inner is not None:
                current = inner
                break
        else:
            return None
    return None


def sanitize_name(name: str) -> str:
    """``name`` made of id characters only: other runs become ``_``, ends trimmed."""
    return _NOT_ID_CHARS.sub("_", name).strip("_-") or DEFAULT_NAME


def default_workflow_id(
    program: object, fallback: str | None = None, now: float | None = None
) -> str:
    """``<name>-<UTC time>`` (``report-20261207T020102Z``): the name of the program's
    function, else ``fallback``, else ``workflow``."""
    stamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime(time.time() if now is None else now))
    name = sanitize_name(program_name(program) or fallback or DEFAULT_NAME)
    return f"{name[: MAX_ID_LENGTH - len(stamp) - 1]}-{stamp}"


def with_pid(workflow_id: str) -> str:
    """A derived id made unique to this process, for when another run took it this second."""
    suffix = f"-{os.getpid()}"
    return workflow_id[: MAX_ID_LENGTH - len(suffix)] + suffix


def _open_tracer(program: object) -> TraceObserver:
    trace_dir = resolve_trace_dir(None)
    explicit = os.environ.get(WORKFLOW_ID_ENV)
    if explicit:  # set but empty counts as unset, as for $DOEFF_FLOW_TRACE_DIR
        return TraceObserver(explicit, trace_dir)
    workflow_id = default_workflow_id(program)
    try:
        return TraceObserver(workflow_id, trace_dir)
    except WorkflowBusy:
        return TraceObserver(with_pid(workflow_id), trace_dir)


# -- the transform --------------------------------------------------------------------


class _Runs:
    """The runs of one traced program.

    The first run uses the tracer ``traced`` opened, so a bad id or an unwritable trace
    directory is refused before anything runs. A later run (the same program run again)
    opens a tracer of its own: a new run in the same trace. A run that starts while
    another is still going is not traced: one workflow id has one writer at a time.
    """

    def __init__(self, tracer: TraceObserver) -> None:
        self.workflow_id = tracer.workflow_id
        self.trace_dir = tracer.trace_dir
        self._first: TraceObserver | None = tracer
        self._running = False
        self._lock = threading.Lock()

    def start(self) -> TraceObserver | None:
        with self._lock:
            if self._running:
                _note(f"{self.workflow_id} is being traced already; this run is not traced")
                return None
            tracer, self._first = self._first, None
            if tracer is None:
                try:
                    tracer = TraceObserver(self.workflow_id, self.trace_dir)
                except Exception as exc:
                    # Tracing never stops the workflow once it has been handed over.
                    _note(f"{exc}; this run is not traced")
                    return None
                _unfinished.add(tracer)
            self._running = True
            _started.add(tracer)
            return tracer

    def finish(self, tracer: TraceObserver, error: BaseException | None = None) -> None:
        _close(tracer, error)  # first: the next run takes the writer lock this one held
        with self._lock:
            self._running = False


def traced(program: Any) -> Any:
    """``program`` traced to ``<trace_dir>/<workflow_id>/trace.jsonl``: a ``--transform``
    for ``doeff run``.

    The workflow id is ``$DOEFF_FLOW_WORKFLOW_ID``, else ``<name>-<UTC time>`` from the
    function of the program; the trace directory ``$DOEFF_FLOW_TRACE_DIR``, else
    ``.doeff-flow``. Raises ``InvalidWorkflowId``, ``WorkflowBusy`` or
    ``TraceDirUnwritable`` before anything runs.
    """
    from doeff import do

    tracer = _open_tracer(program)
    _unfinished.add(tracer)
    _install_exit_hook()
    runs = _Runs(tracer)

    @do  # type: ignore[untyped-decorator]
    def traced_by_doeff_flow() -> Any:
        current = runs.start()
        if current is None:
            return (yield program)
        with sigterm_recorded(current):  # until the terminal record is written
            try:
                value = yield current.observe(program)
            except BaseException as exc:
                runs.finish(current, exc)
                raise
            runs.finish(current)
        return value

    return traced_by_doeff_flow()


# -- closing what the program did not close -------------------------------------------

_unfinished: set[TraceObserver] = set()  # opened, terminal record not yet written
_started: set[TraceObserver] = set()
_hook_lock = threading.Lock()
_hook_installed = False


def _note(message: str) -> None:
    print(f"doeff-flow: {message}", file=sys.stderr)


def _close(tracer: TraceObserver, error: BaseException | None = None) -> None:
    _unfinished.discard(tracer)
    _started.discard(tracer)
    try:
        tracer.close(error)
    except Exception as exc:  # never in place of the workflow's own result or error
        _note(f"could not close the trace of {tracer.workflow_id}: {exc}")


def _close_unfinished() -> None:
    for tracer in list(_unfinished):
        _close(tracer, ProgramDidNotFinish() if tracer in _started else ProgramNeverRan())


def _install_exit_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            atexit.register(_close_unfinished)
            _hook_installed = True


# -- finding a program by reference ---------------------------------------------------


def load_program(reference: str) -> object:
    """The doeff program named ``pkg.mod:program`` or ``pkg.mod.program``.

    Raises ``MalformedReference``, ``ProgramNotFound`` (no such module or attribute),
    ``ProgramImportFailed`` (the module raised while importing) or ``NotAProgram``.
    """
    from doeff import DoExpr, EffectBase

    value, module_name, attributes = _import_reference(reference)
    for depth, attribute in enumerate(attributes):
        if not hasattr(value, attribute):
            owner = ".".join([module_name, *attributes[:depth]])
            raise ProgramNotFound(reference, f"{owner} has no attribute {attribute!r}")
        value = getattr(value, attribute)
    if not isinstance(value, DoExpr | EffectBase):
        raise NotAProgram(reference, value)
    return value


def _import_reference(reference: str) -> tuple[object, str, list[str]]:
    """The module ``reference`` names, its name, and the attribute path within it."""
    module_name, colon, attribute_path = reference.partition(":")
    if colon:
        attributes = attribute_path.split(".")
        if ":" in attribute_path or not all([*module_name.split("."), *attributes]):
            raise MalformedReference(reference)
        return _import(module_name, reference), module_name, attributes
    parts = reference.split(".")
    if len(parts) < 2 or not all(parts):
        raise MalformedReference(reference)
    # pkg.mod.program: the longest prefix that is a module, with an attribute left over.
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        try:
            return _import(candidate, reference), candidate, parts[cut:]
        except ProgramNotFound:
            if cut == 1:
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def _import(module_name: str, reference: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _names_missing_module(exc, module_name):
            raise ProgramNotFound(reference, f"no module named {exc.name!r}") from None
        raise ProgramImportFailed(module_name, exc) from exc
    except Exception as exc:
        raise ProgramImportFailed(module_name, exc) from exc


def _names_missing_module(error: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``error`` is about ``module_name`` (or a package above it) not existing,
    rather than about a module that ``module_name``'s own code imports."""
    missing = error.name
    return missing is not None and (module_name == missing or module_name.startswith(f"{missing}."))
