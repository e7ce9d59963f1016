"""``run PROGRAM [--id ID]``: run a doeff program traced, for those who do not use
``doeff run``.

The program is found by reference (``pkg.mod:program`` or ``pkg.mod.program``) with the
current directory importable, as under ``python -m``; it runs under ``run_workflow``, so
it gets the handlers ``doeff run`` would give it. Its value is printed as ``doeff run``
prints it; a failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, TextIO, cast

from doeff_flow_core import (
    BadTraceSetting,
    InvalidWorkflowId,
    TraceDirUnwritable,
    WorkflowBusy,
    WorkflowResult,
    run_workflow,
    validate_workflow_id,
)
from doeff_flow_core import transform as core
from doeff_flow_core.escape import safe, safe_clip
from flowctl import exitcodes
from flowctl.console import Console
from flowctl.errors import (
    BadProgramReference,
    BadWorkflowId,
    ProgramImportFailed,
    ProgramNotFound,
    TraceNotWritable,
    UsageError,
    WorkflowInUse,
    WorkflowRunFailed,
)
from flowctl.options import Request

MAX_REPORT_CHARS: Final = 500
# How doeff.run starts the traceback it prints on failure (doeff.traceback.format_default).
DOEFF_TRACEBACK_HEAD: Final = "\ndoeff Traceback (most recent call last):"


def one_line(text: str) -> str:
    """The first line of ``text``, escaped and bounded: errors are reported in one line."""
    first = text.strip().split("\n", 1)[0]
    return safe_clip(first, MAX_REPORT_CHARS)


def run_program(console: Console, request: Request) -> int:
    reference = request.program
    if not reference:
        raise UsageError("a program is needed: run pkg.mod:program")
    explicit_id = request.workflow_id
    if explicit_id is not None:
        try:
            validate_workflow_id(explicit_id)
        except InvalidWorkflowId as exc:  # before the program's module is imported
            raise BadWorkflowId(one_line(str(exc))) from None
    program = _load(reference)
    if explicit_id is not None:
        result = _run(program, explicit_id, request, derived=False)
    else:
        fallback = reference.replace(":", ".").rsplit(".", 1)[-1]
        workflow_id = core.default_workflow_id(program, fallback)
        result = _run(program, workflow_id, request, derived=True)
    if request.options.json:
        console.out.write(json.dumps(_summary(result)) + "\n")
    elif result.error is None:
        print(result.value, file=console.out)  # as ``doeff run`` prints it
    console.out.flush()
    error = result.error
    if error is not None:
        if request.options.verbose and not hasattr(error, "__doeff_traceback__"):
            for line in traceback.format_exception(error):
                console.err.write("".join(safe(part) + "\n" for part in line.splitlines()))
        raise WorkflowRunFailed(result.workflow_id, one_line(f"{type(error).__name__}: {error}"))
    return exitcodes.OK


def _load(reference: str) -> object:
    # As ``python -m`` does: modules of the project in the current directory import.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return core.load_program(reference)
    except (core.MalformedReference, core.NotAProgram) as exc:
        raise BadProgramReference(one_line(str(exc))) from None
    except core.ProgramNotFound as exc:
        raise ProgramNotFound(one_line(str(exc))) from None
    except core.ProgramImportFailed as exc:
        raise ProgramImportFailed(one_line(str(exc))) from None


def _run(
    program: object, workflow_id: str, request: Request, *, derived: bool
) -> WorkflowResult[Any]:
    trace_dir = request.options.trace_dir
    try:
        with _quiet_doeff_traceback(enabled=not request.options.verbose):
            try:
                return run_workflow(program, workflow_id, trace_dir)
            except WorkflowBusy:
                if not derived:
                    raise
                # Another run of the same program started in the same second.
                return run_workflow(program, core.with_pid(workflow_id), trace_dir)
    except WorkflowBusy as exc:
        raise WorkflowInUse(one_line(str(exc))) from None
    except TraceDirUnwritable as exc:
        raise TraceNotWritable(one_line(str(exc))) from None
    except BadTraceSetting as exc:
        raise UsageError(one_line(str(exc))) from None


def _summary(result: WorkflowResult[Any]) -> dict[str, object]:
    error = result.error
    return {
        "workflow_id": result.workflow_id,
        "status": "completed" if error is None else "failed",
        "result": _json_safe(result.value) if error is None else None,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "trace": str(result.trace_path),
        "run": result.run_id,
    }


def _json_safe(value: object) -> object:
    """``value`` when JSON can hold it, else its repr (as ``doeff run --format json``)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class _WithoutDoeffTraceback:
    """``sys.stderr`` minus the traceback ``doeff.run`` writes when the program fails: the
    failure is reported in one line (``--verbose`` keeps the traceback). Everything else the
    program writes to stderr passes straight through, as it is written."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith(DOEFF_TRACEBACK_HEAD):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def _quiet_doeff_traceback(*, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    original = sys.stderr
    quiet = cast(TextIO, _WithoutDoeffTraceback(original))
    sys.stderr = quiet
    try:
        yield
    finally:
        if sys.stderr is quiet:  # unless the program replaced sys.stderr itself
            sys.stderr = original
