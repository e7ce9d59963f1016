"""SIGTERM recorded: a run stopped by systemd, Kubernetes or a supervisor ends its trace
with a ``failed`` record (``error: "Terminated: SIGTERM"``, the stack where it was), not
as a ``running`` record that readers can only call ``lost``.

While a run traced in the main thread is under way and SIGTERM has its default
disposition, a handler is installed that records the signal in every such run, puts the
default back and sends SIGTERM again: the process ends as it would have (status -15,
143 from a shell). A handler the application installed (or SIG_IGN) is left alone, and
so is a run in another thread (only the main thread may set handlers). The disposition
found is put back when the last of the runs ends. SIGINT needs nothing here: it raises
KeyboardInterrupt in the workflow, which is recorded as a failure.

Python runs signal handlers in the main thread between bytecodes, so the record waits
for the main thread to run Python again: at once in a workflow's own code, in a handler
sleeping, or in ``Await`` (doeff's scheduler waits in Python); a single long call into C
or Rust that never returns to Python delays it until that call returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final, Protocol

TERMINATED: Final = "Terminated: SIGTERM"


class Terminable(Protocol):
    @property
    def path(self) -> object: ...

    def terminate(self, error: str, frame: FrameType | None = None) -> bool: ...


_runs: list[Terminable] = []  # the runs recording SIGTERM now, innermost last
_deferred: list[Terminable] = []  # runs that record it once their own code is over
_found: list[Any] = []  # the disposition found when the first of them began


@contextmanager
def sigterm_recorded(run: Terminable) -> Iterator[None]:
    """Within this block, SIGTERM writes ``run``'s terminal record before it ends the
    process (see the module's docstring for when it does not)."""
    if not _join(run):
        yield
        return
    try:
        yield
    finally:
        _leave(run)


def _join(run: Terminable) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if not _runs:
        if current is not signal.SIG_DFL:
            return False  # the application's choice
        _found[:] = [signal.signal(signal.SIGTERM, _on_sigterm)]
    elif current is not _on_sigterm:
        return False  # replaced by the application meanwhile: its choice now
    _runs.append(run)
    return True


def _leave(run: Terminable) -> None:
    _runs.remove(run)
    if run in _deferred:  # its code ended without recording SIGTERM: the process ends now
        recorded(run)
    if not _runs and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _found.pop() if _found else signal.SIG_DFL)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # This runs between two bytecodes of whatever the main thread was doing: nothing here
    # takes a lock that code may hold (sys.stderr's included: os.write, not print). A run
    # interrupted inside its own encoding or writing records the signal as soon as that
    # code ends, and only then does the process end (``recorded``).
    try:
        for run in reversed(_runs):
            try:
                if not run.terminate(TERMINATED, frame) and run not in _deferred:
                    _deferred.append(run)
            except Exception as exc:
                _say(f"doeff-flow: could not record SIGTERM in {run.path}: {exc}\n")
    finally:
        if not _deferred:  # the process ends whatever the trace could hold
            _end_process()


def recorded(run: Terminable) -> None:
    """``run``, which put off recording SIGTERM, has recorded it: once every such run
    has, the process ends as SIGTERM ends it."""
    if run in _deferred:
        _deferred.remove(run)
        if not _deferred:
            _end_process()


def _end_process() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "backslashreplace"))
