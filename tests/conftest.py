"""Fixtures for every test (helpers are in ``tests.support``).

Every test runs with ``XDG_STATE_HOME`` pointing at a fresh temporary directory (so the
trace-directory registry never touches the real home), without ``DOEFF_FLOW_TRACE_DIR``
(so the default trace directory is the one a test chooses), and with
``DOEFF_FLOW_SOCKET`` naming no daemon (so flowctl reads files unless a test starts one).
A module-scoped fixture runs before this one: one that writes traces in this process
sets its own with ``private_state``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import private_state, python_command, python_env


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$XDG_STATE_HOME`` for each test (inherited by its subprocesses), and no
    flowd unless the test starts one (``$DOEFF_FLOW_SOCKET`` names a socket nobody
    listens on, so flowctl never finds a daemon someone runs on this machine)."""
    return private_state(monkeypatch, tmp_path_factory.mktemp("state-home"))


@pytest.fixture
def start_python() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a Python snippet in the background; whatever is still running is killed after."""
    started: list[subprocess.Popen[str]] = []

    def start(
        code: str,
        *args: object,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            python_command(code, args),
            cwd=cwd,
            env=python_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
