"""Spoofed daemons: servers that are not the user's flowd, where flowctl looks for it.

Each attack puts a fake server (``tests.support.fakeflowd``: it answers ``ps`` with a
workflow of its own and logs every request) where flowctl would find flowd: in another
user's directory (the default ``$XDG_RUNTIME_DIR/doeff-flow`` and, when XDG_RUNTIME_DIR
is unset, ``/tmp/doeff-flow-$UID``), behind a symbolic link, in a directory open to
others, named by ``--socket``, or in the right directory but running as another uid.
flowctl must list the trace files' workflow, nothing of the server's, send it no request
and say so in one line. A server flowctl trusts that answers with one 900 MB line must
cost flowctl no more memory than the bound, and so must one that pushes notifications
instead of answering. flowd must refuse such directories before it
creates a file there, and still start where it can.

Playing another user needs root; without it those attacks are skipped (and counted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import PY, env, tempdir

from flowctl import exitcodes
from flowctl.sources.rpc import KEPT_BYTES, MAX_LINE
from tests.support.fakeflowd import SPOOFED_ID, FakeFlowd
from tests.support.flowd import Flowd
from tests.support.procs import PROJECT_ROOT, run_peak, wait_until
from tests.support.traces import put_trace, record_line

NOBODY = 65534
HUGE_LINE = 900 << 20
# flowctl's peak RSS while a 900 MB line arrives: the bound, the interpreter, slack.
RSS_BOUND_KIB = (MAX_LINE >> 10) * 5 // 4 + 100_000
# ... and while notifications arrive instead of an answer: parsed, they take ~10x their size.
FLOOD_RSS_BOUND_KIB = (KEPT_BYTES >> 10) * 12 + 100_000
START_TIMEOUT = 20.0


@dataclass
class Figures:
    attacks: int = 0
    skipped: int = 0
    why_skipped: list[str] = field(default_factory=list)
    runs: int = 0
    reached: int = 0  # runs that sent a request to a fake, or printed what it said
    unsaid: int = 0  # runs that fell back without saying why in one line
    peak_rss_kib: int = 0
    flood_rss_kib: int = 0  # while notifications come instead of an answer
    outside: int = 0  # files flowd created where a link or a shared directory led
    refused: int = 0
    refusals: int = 0
    started: int = 0
    starts: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, why: str) -> None:
        self.skipped += 1
        self.why_skipped.append(why)

    def line(self) -> str:
        skipped = (
            f" ({self.skipped} skipped: {', '.join(self.why_skipped)})" if self.skipped else ""
        )
        return (
            f"spoof: {self.attacks} attacks{skipped} over {self.runs} flowctl runs, "
            f"{self.reached} reached flowctl's data path, {self.unsaid} not said; "
            f"peak flowctl RSS {self.peak_rss_kib / 1024:.0f} MB under a "
            f"{HUGE_LINE >> 20} MB line (bound {MAX_LINE >> 20} MiB), "
            f"{self.flood_rss_kib / 1024:.0f} MB under endless notifications "
            f"(bound {KEPT_BYTES >> 20} MiB); "
            f"{self.outside} files created outside; flowd refused "
            f"{self.refused}/{self.refusals} unsafe directories, started "
            f"{self.started}/{self.starts} where it could"
        )

    def ok(self) -> bool:
        return (
            not (self.reached or self.unsaid or self.outside or self.problems)
            and self.refused == self.refusals
            and self.started == self.starts
            and 0 < self.peak_rss_kib < RSS_BOUND_KIB
            and 0 < self.flood_rss_kib < FLOOD_RSS_BOUND_KIB
        )


class Scene:
    """A short directory: a runtime directory, a trace directory with one workflow, logs."""

    def __init__(self) -> None:
        self.base = tempdir("sp")
        self.runtime = self.base / "run"
        self.runtime.mkdir(mode=0o700)
        self.traces = self.base / "traces"
        put_trace(self.traces, "wf-real", record_line("wf-real", 4, status="completed"))
        self.state = self.base / "state"
        self.count = 0

    def log(self) -> Path:
        self.count += 1
        return self.base / f"fake-{self.count}.log"

    def env(self, runtime: str | None = None, socket: str = "") -> dict[str, str]:
        return env(
            {
                "XDG_RUNTIME_DIR": str(self.runtime) if runtime is None else runtime,
                "DOEFF_FLOW_SOCKET": socket,
                "XDG_STATE_HOME": str(self.state),
            }
        )

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


Run = tuple[list[str], str]  # flowctl's arguments, and what its output holds from the files


def flowctl_runs(quick: bool) -> list[Run]:
    runs: list[Run] = [(["ps"], "wf-real")]
    if not quick:
        runs += [(["ps", "--json"], '"wf-real"'), (["history", "wf-real"], "step    4  completed")]
    return runs


def attack(
    fig: Figures,
    scene: Scene,
    name: str,
    fake: FakeFlowd,
    why: str,
    environ: dict[str, str],
    runs: list[Run],
    flowctl_args: tuple[str, ...] = (),
) -> None:
    """flowctl ``runs`` against ``fake``: the files' workflow, nothing of the fake's, no
    request sent to it, one line on stderr naming ``why``."""
    fig.attacks += 1
    for args, expected in runs:
        fig.runs += 1
        command = [PY, "-m", "flowctl", *flowctl_args, "--trace-dir", str(scene.traces), *args]
        code, out, err, _ = run_peak(command, environ, scene.base)
        if fake.received() or SPOOFED_ID in out or expected not in out or code != 0:
            fig.reached += 1
            fig.problems.append(f"{name} {args}: exit {code}, {out[:100]!r}, {err[:200]!r}")
        lines = err.splitlines()
        if len(lines) != 1 or why not in lines[0] or "reading trace files" not in lines[0]:
            fig.unsaid += 1
            fig.problems.append(f"{name} {args}: stderr {err[:300]!r}")


@contextmanager
def fake_at(scene: Scene, sock: Path, *args: object) -> Iterator[FakeFlowd]:
    fake = FakeFlowd(sock, scene.log(), *args)
    try:
        yield fake
    finally:
        fake.close()


def attacks_on_flowctl(fig: Figures, scene: Scene, quick: bool) -> None:
    root = os.geteuid() == 0
    runs = flowctl_runs(quick)
    sock_dir = scene.runtime / "doeff-flow"
    sock = sock_dir / "flowd.sock"

    # another user made $XDG_RUNTIME_DIR/doeff-flow first and serves there as themself
    if root:
        sock_dir.mkdir(mode=0o700)
        os.chown(sock_dir, NOBODY, NOBODY)
        with fake_at(scene, sock, "--uid", NOBODY) as fake:
            attack(
                fig, scene, "other user's dir", fake, f"owned by uid {NOBODY}", scene.env(), runs
            )
        shutil.rmtree(sock_dir)
    else:
        fig.skip("another user's directory: not root")

    # the same at /tmp/doeff-flow-$UID, XDG_RUNTIME_DIR unset (flowd's own path is tried too)
    default_dir = Path(f"/tmp/doeff-flow-{os.geteuid()}")
    if root and not os.path.lexists(default_dir):
        try:
            default_dir.mkdir(mode=0o700)
            os.chown(default_dir, NOBODY, NOBODY)
            with fake_at(scene, default_dir / "flowd.sock", "--uid", NOBODY) as fake:
                attack(
                    fig, scene, "/tmp default", fake, f"owned by uid {NOBODY}", scene.env(""), runs
                )
            flowd_refuses(fig, scene, "/tmp default", None, f"owned by uid {NOBODY}", [])
        finally:
            shutil.rmtree(default_dir, ignore_errors=True)
        flowd_starts(fig, scene, "/tmp default, once the attacker's directory is gone", None)
    elif root:
        fig.skip(f"{default_dir} exists")
    else:
        fig.skip(f"{default_dir}: not root")

    # a link to a directory that is right in every other way
    elsewhere = tempdir("spl")
    sock_dir.symlink_to(elsewhere)
    with fake_at(scene, sock) as fake:
        attack(fig, scene, "symlinked dir", fake, "a symbolic link", scene.env(), runs)
    sock_dir.unlink()
    shutil.rmtree(elsewhere, ignore_errors=True)

    # this user's directory, open to others
    sock_dir.mkdir(mode=0o700)
    with fake_at(scene, sock) as fake:
        sock_dir.chmod(0o755)
        attack(fig, scene, "dir 0755", fake, "mode 0755", scene.env(), runs)
    shutil.rmtree(sock_dir)

    # --socket in a shared directory (as one under /tmp would be)
    shared = scene.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with fake_at(scene, shared / "s") as fake:
        args = ("--socket", str(shared / "s"))
        attack(fig, scene, "--socket shared", fake, "mode 1777", scene.env(), runs, args)
    shutil.rmtree(shared)

    # the right directory, a server of another uid
    if root:
        sock_dir.mkdir(mode=0o700)
        with fake_at(scene, sock, "--uid", NOBODY, "--socket-mode", "777") as fake:
            attack(fig, scene, "peer uid", fake, f"served by uid {NOBODY}", scene.env(), runs)
        shutil.rmtree(sock_dir)
    else:
        fig.skip("a server of another uid: not root")


def oversized_answer(fig: Figures, scene: Scene) -> None:
    """A server flowctl trusts sends one 900 MB line: dropped at the bound, memory bounded."""
    sock_dir = scene.runtime / "doeff-flow"
    sock_dir.mkdir(mode=0o700)
    fig.attacks += 1
    fig.runs += 1
    with fake_at(scene, sock_dir / "flowd.sock", "--huge", HUGE_LINE) as fake:
        command = [PY, "-m", "flowctl", "--trace-dir", str(scene.traces), "ps"]
        code, out, err, peak = run_peak(command, scene.env(), scene.base)
        fig.peak_rss_kib = max(fig.peak_rss_kib, peak)
        if code != 0 or "wf-real" not in out or SPOOFED_ID in out:
            fig.reached += 1
            fig.problems.append(f"900 MB line: exit {code}, {out[:100]!r}, {err[:200]!r}")
        if f"more than {MAX_LINE >> 20} MiB in one line" not in err or len(err.splitlines()) != 1:
            fig.unsaid += 1
            fig.problems.append(f"900 MB line: stderr {err[:300]!r}")
        if fake.sent() > MAX_LINE + (16 << 20):
            fig.problems.append(f"900 MB line: {fake.sent()} bytes read before dropping it")
    shutil.rmtree(sock_dir)


def flooded(fig: Figures, scene: Scene) -> None:
    """A server flowctl trusts answers ``ping``, then only pushes notifications: dropped
    at their bound, said in one line, memory bounded."""
    sock_dir = scene.runtime / "doeff-flow"
    sock_dir.mkdir(mode=0o700)
    fig.attacks += 1
    fig.runs += 1
    with fake_at(scene, sock_dir / "flowd.sock", "--flood") as fake:
        command = [PY, "-m", "flowctl", "--trace-dir", str(scene.traces), "ps"]
        code, out, err, peak = run_peak(command, scene.env(), scene.base)
        fig.flood_rss_kib = max(fig.flood_rss_kib, peak)
        if code != exitcodes.UNAVAILABLE or SPOOFED_ID in out:
            fig.reached += 1
            fig.problems.append(f"flood: exit {code}, {out[:100]!r}, {err[:200]!r}")
        if f"more than {KEPT_BYTES >> 20} MiB in notifications" not in err or err.count("\n") != 1:
            fig.unsaid += 1
            fig.problems.append(f"flood: stderr {err[:300]!r}")
        if fake.sent() > KEPT_BYTES + (16 << 20):
            fig.problems.append(f"flood: {fake.sent()} bytes read before dropping it")
    shutil.rmtree(sock_dir)


def flowd_command(sock: Path | None) -> list[str]:
    return [PY, "-m", "flowd", *(["--socket", str(sock)] if sock is not None else [])]


def flowd_refuses(
    fig: Figures, scene: Scene, name: str, sock: Path | None, why: str, watched: list[Path]
) -> None:
    """flowd on ``sock`` (None: the default path, XDG_RUNTIME_DIR unset) exits 1 with one
    line naming ``why`` and creates nothing in the ``watched`` directories."""
    fig.refusals += 1
    environ = scene.env("") if sock is None else scene.env()
    try:
        done = subprocess.run(
            flowd_command(sock),
            env=environ,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fig.problems.append(f"flowd {name}: still running after {START_TIMEOUT:g} s")
        return
    lines = [line for line in done.stderr.splitlines() if line.startswith("flowd: ")]
    if done.returncode == 1 and len(lines) == 1 and why in lines[0]:
        fig.refused += 1
    else:
        fig.problems.append(f"flowd {name}: exit {done.returncode}, {done.stderr[-300:]!r}")
    for directory in watched:
        made = list(directory.iterdir())
        fig.outside += len(made)
        fig.problems += [f"flowd {name}: created {path}" for path in made]


def flowd_starts(fig: Figures, scene: Scene, name: str, sock: Path | None) -> None:
    """flowd starts and answers where it can (None: the default path under /tmp)."""
    fig.starts += 1
    if sock is not None:
        try:
            Flowd(state=scene.state, socket_path=sock, env=scene.env()).cleanup()
            fig.started += 1
        except RuntimeError as exc:
            fig.problems.append(f"flowd {name}: {exc}")
        return
    expected = Path(f"/tmp/doeff-flow-{os.geteuid()}") / "flowd.sock"
    proc = subprocess.Popen(
        flowd_command(None),
        env=scene.env(""),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if wait_until(lambda: expected.exists() or proc.poll() is not None, START_TIMEOUT):
            fig.started += proc.poll() is None
        if proc.poll() is not None:
            fig.problems.append(f"flowd {name}: exited {proc.returncode}")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=START_TIMEOUT)
        if proc.returncode not in (0, -15):
            fig.problems.append(f"flowd {name}: {err.decode(errors='replace')[-300:]!r}")
        shutil.rmtree(expected.parent, ignore_errors=True)


def attacks_on_flowd(fig: Figures, scene: Scene) -> None:
    shared = scene.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = scene.base / "link"
    link.symlink_to(shared)
    flowd_refuses(fig, scene, "symlinked dir", link / "flowd.sock", "a symbolic link", [shared])
    link.unlink()
    flowd_refuses(fig, scene, "shared dir", shared / "flowd.sock", "mode 1777", [shared])
    private = scene.base / "private"
    private.mkdir(mode=0o700)
    chosen = scene.base / "chosen"
    chosen.mkdir()
    (private / "flowd.sock.lock").symlink_to(chosen / "victim")
    flowd_refuses(fig, scene, "linked lock", private / "flowd.sock", "a symbolic link", [chosen])
    (private / "flowd.sock.lock").unlink()
    flowd_starts(fig, scene, "its own runtime directory", scene.runtime / "doeff-flow" / "f.sock")
    flowd_starts(fig, scene, "a private directory", private / "flowd.sock")


def run(quick: bool = False, seed: int = 0) -> Figures:
    del seed  # the attacks are fixed
    fig = Figures()
    scene = Scene()
    steps: list[Callable[[], None]] = [
        lambda: attacks_on_flowctl(fig, scene, quick),
        lambda: oversized_answer(fig, scene),
        lambda: flooded(fig, scene),
        lambda: attacks_on_flowd(fig, scene),
    ]
    try:
        for step in steps:
            step()
    finally:
        scene.close()
    return fig


if __name__ == "__main__":
    figures = run(quick="--quick" in sys.argv)
    print(figures.line())
    for problem in figures.problems:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(0 if figures.ok() else 1)
