"""``flowctl`` and ``doeff-flow`` as processes, and a real terminal (tmux) to run them in."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from tests.support.procs import python_env, run_command, wait_until


def flowctl_command(*args: object, seed: bool = False) -> list[str]:
    if seed:
        code = "import sys; from flowctl.cli import seed_main; sys.exit(seed_main())"
        return [sys.executable, "-c", code, *map(str, args)]
    return [sys.executable, "-m", "flowctl", *map(str, args)]


def flowctl(
    *args: object,
    seed: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``flowctl ARGS`` (or ``doeff-flow ARGS``) as a process, output captured."""
    return run_command(flowctl_command(*args, seed=seed), cwd=cwd, env=env, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """A failure as flowctl reports one: exit ``code``, one ``flowctl:`` line holding ``text``."""
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowctl: ") and text in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# ``history``'s clock and step-time columns: ``12:00:00.123      41 ms  `` after the status.
_TIMED = re.compile(r"^(step +\d+  \S+ +)(?:\d\d:\d\d:\d\d\.\d{3}|-           )  .{10}  ", re.M)


def untimed(text: str) -> str:
    """``history`` text without the time and step-time columns (the seed's shape)."""
    return _TIMED.sub(r"\1", text)


class Tmux:
    """A private tmux server running one command in a real pseudo-terminal."""

    def __init__(self, name: str, command: list[str], columns: int = 100, rows: int = 40) -> None:
        # A server of its own, on a socket in a short private directory removed on close
        # (never reused, even while an old server shuts down).
        self._dir = tempfile.mkdtemp(prefix=f"{name}-")
        self._base = ["/usr/bin/tmux", "-S", f"{self._dir}/tmux", "-f", "/dev/null"]
        env = python_env()
        exports = [f"{key}={env[key]}" for key in ("PYTHONPATH", "XDG_STATE_HOME") if key in env]
        shell = " ".join(shlex.quote(part) for part in ["env", *exports, *command])
        # Keep the pane after the command ends, so its exit code can be read.
        self._run(
            "new-session",
            "-d",
            "-x",
            str(columns),
            "-y",
            str(rows),
            f"{shell}; echo EXIT=$?; sleep 60",
        )

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self._base, *args], capture_output=True, text=True, check=False)
        return done.stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._run("send-keys", *keys)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        found = wait_until(lambda: text in (screen := self.screen()) and screen, timeout, 0.05)
        assert found, f"{text!r} never appeared; screen:\n{self.screen()}"
        return str(found)

    def close(self) -> None:
        self._run("kill-server")
        shutil.rmtree(self._dir, ignore_errors=True)
