"""Shared helpers of the fault suite: the project on the path, its private state and
runtime directories, flowd as a subprocess (``tests.support``'s, with those), RSS, and
reading every part of a trace. The JSON-lines socket client and polling are
``tests.support``'s, shared with the tests and the benchmarks."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from doeff_flow_core.tracefiles.reading import Tail, read_all, read_latest  # noqa: E402
from tests.support import flowd as support  # noqa: E402
from tests.support.procs import python_env  # noqa: E402

PY = sys.executable
# The suite's own state and runtime directories: workers register their trace directories
# there, not in the user's registry, and flowctl never finds a flowd it did not start.
PRIVATE = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
PRIVATE_ENV = {
    "XDG_STATE_HOME": str(PRIVATE / "state"),
    "XDG_RUNTIME_DIR": str(PRIVATE / "run"),
    "DOEFF_FLOW_SOCKET": str(PRIVATE / "run" / "none.sock"),
}


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment with the project first on PYTHONPATH, and the suite's own
    state and runtime directories."""
    return python_env({**PRIVATE_ENV, **(extra or {})})


def tempdir(prefix: str) -> Path:
    """A short directory under /tmp (socket paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parts(trace: Path) -> list[Path]:
    """A trace's files, oldest first: trace.jsonl.N ... trace.jsonl.1, trace.jsonl."""
    rotated = []
    for path in trace.parent.glob(trace.name + ".*"):
        suffix = path.name[len(trace.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    rotated.sort(reverse=True)
    found = [path for _, path in rotated]
    if trace.exists():
        found.append(trace)
    return found


def read_parts(trace: Path) -> list[tuple[Path, Tail]]:
    return [(path, read_all(path)) for path in parts(trace)]


class Flowd(support.Flowd):
    """``python -m flowd --root ROOT ...`` on a socket under /tmp, with its log in a file,
    its own state directory, and the suite's runtime directory."""

    def __init__(
        self, roots: list[Path], socket_path: Path | None = None, extra: Sequence[str] = ()
    ) -> None:
        args = [arg for root in roots for arg in ("--root", str(root))]
        runtime = {key: PRIVATE_ENV[key] for key in ("XDG_RUNTIME_DIR", "DOEFF_FLOW_SOCKET")}
        super().__init__(*args, *extra, socket_path=socket_path, env=runtime, ready_timeout=30)
        self.roots = roots


def written_by(trace: Path, pid: int) -> Callable[[], bool]:
    """Whether a record of process ``pid``'s run is readable in ``trace`` yet (the file
    alone may exist and be empty: a run stopped before its first flush shows nothing)."""

    def written() -> bool:
        try:
            latest = read_latest(trace)
        except OSError:
            return False
        return latest is not None and latest.pid == pid

    return written
