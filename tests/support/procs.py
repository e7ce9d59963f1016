"""Subprocesses with the project importable, a private state home, and polling."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
T = TypeVar("T")


def private_state(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """``home`` as ``$XDG_STATE_HOME`` (inherited by subprocesses), so the trace-directory
    registry never touches the real home; no flowd unless a test starts one
    (``$DOEFF_FLOW_SOCKET`` names a socket nobody listens on, so flowctl never finds a
    daemon someone runs on this machine); no ``$DOEFF_FLOW_TRACE_DIR`` (the default trace
    directory is the one a test chooses)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.setenv("DOEFF_FLOW_SOCKET", str(home / "no-flowd.sock"))
    monkeypatch.delenv("DOEFF_FLOW_TRACE_DIR", raising=False)
    return home


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment with the project first on ``PYTHONPATH``."""
    env = dict(os.environ)
    parts = [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def python_command(code: str, args: Sequence[object] = ()) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def run_python(
    code: str,
    *args: object,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet (dedented) in a fresh interpreter; ``args`` become ``sys.argv[1:]``."""
    return run_command(python_command(code, args), cwd=cwd, env=env, timeout=timeout)


def run_command(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with the project importable, no input, output captured as text."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=python_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.005) -> T | None:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    """``wait_until`` polling every 10 ms; AssertionError naming ``what`` on timeout."""
    value = wait_until(predicate, timeout, 0.01)
    assert value, f"timed out waiting for {what}"
    return value


# Runs argv[2:] as a child of this small, fresh interpreter and writes its exit code and
# peak RSS (KiB) to argv[1]. The child of a big process (pytest) would report that
# process's RSS as its own: ru_maxrss counts the memory a process had before exec.
_PEAK = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_peak(command: Sequence[str], env: dict[str, str], out: Path) -> tuple[int, str, str, int]:
    """Run ``command`` (its stdout and stderr kept in files under ``out``): its exit code,
    stdout, stderr and peak RSS in KiB, its own (and that of any child it waited for)."""
    with open(out / "stdout", "wb") as stdout, open(out / "stderr", "wb") as stderr:
        subprocess.run(
            [sys.executable, "-c", _PEAK, str(out / "peak"), *command],
            env=env,
            stdout=stdout,
            stderr=stderr,
            cwd=out,
            check=False,
        )
    code, peak = (out / "peak").read_text().split()
    texts = [(out / name).read_text(errors="replace") for name in ("stdout", "stderr")]
    return int(code), texts[0], texts[1], int(peak)
