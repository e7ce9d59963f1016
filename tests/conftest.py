"""Shared test helpers: isolation from the real home, subprocesses, polling, source lines.

Every test runs with ``XDG_STATE_HOME`` pointing at a fresh temporary directory (so the
trace-directory registry never touches the real home), without ``DOEFF_FLOW_TRACE_DIR``
(so the default trace directory is the one a test chooses), and with
``DOEFF_FLOW_SOCKET`` naming no daemon (so flowctl reads files unless a test starts one).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$XDG_STATE_HOME`` for each test (inherited by its subprocesses), and no
    flowd unless the test starts one (``$DOEFF_FLOW_SOCKET`` names a socket nobody
    listens on, so flowctl never finds a daemon someone runs on this machine)."""
    home = tmp_path_factory.mktemp("state-home")
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


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete line of a JSON Lines file, parsed.

    Lines end at "\n" only: ``str.splitlines`` would also split at U+0085 and U+2028,
    which JSON strings may hold unescaped.
    """
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def line_of(function: Callable[..., object], marker: str) -> int:
    """The file line number of the first line of ``function``'s source containing ``marker``."""
    lines, first = inspect.getsourcelines(inspect.unwrap(function))
    for offset, text in enumerate(lines):
        if marker in text:
            return first + offset
    raise AssertionError(f"{marker!r} not in the source of {function!r}")
