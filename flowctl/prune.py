"""``flowctl prune``: remove the traces of finished workflows, and say what it freed.

Only ``completed``, ``failed`` and ``lost`` workflows are removed — never ``running`` or
``unknown`` (another host's), never one whose writer lock is held (a run starting now),
never through a symbolic link. Prune always acts on files, also when flowctl talks to
flowd: the directory is ``--trace-dir`` or the default one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISDIR, S_ISLNK
from typing import Final

from doeff_flow_core import effective_status
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.records import COMPLETED, FAILED, LOST
from doeff_flow_core.tracefiles.layout import LOCK_FILE_NAME, TRACE_FILE_NAME, resolve_trace_dir
from doeff_flow_core.tracefiles.reading import summarize
from flowctl.errors import SourceUnavailable, TraceDirMissing, UsageError
from flowctl.render.timefmt import age, seconds_between

PRUNABLE: Final = (COMPLETED, FAILED, LOST)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` (UsageError otherwise)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"not a duration: {text!r} (a number and s, m, h or d: 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_statuses(text: str) -> frozenset[str]:
    """``completed,failed``: a subset of the prunable statuses (UsageError otherwise)."""
    statuses = frozenset(part.strip() for part in text.split(",") if part.strip())
    wrong = sorted(statuses - set(PRUNABLE))
    if wrong or not statuses:
        raise UsageError(
            f"cannot prune status {', '.join(wrong) or text!r}: only {', '.join(PRUNABLE)}"
        )
    return statuses


@dataclass(frozen=True)
class Pruned:
    """One workflow removed (or, on a dry run, that would be)."""

    workflow_id: str
    status: str
    updated_at: datetime
    size: int


@dataclass(frozen=True)
class Skipped:
    workflow_id: str
    reason: str


@dataclass(frozen=True)
class PruneReport:
    root: Path
    dry_run: bool
    pruned: tuple[Pruned, ...]
    skipped: tuple[Skipped, ...]

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.pruned)


def human_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``64.0 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _tree_size(fd: int) -> int:
    """Bytes held by the files of an open directory (links not followed)."""
    total = 0
    for name in os.listdir(fd):
        with contextlib.suppress(FileNotFoundError):
            stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if S_ISDIR(stat.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    total += _tree_size(sub)
                finally:
                    os.close(sub)
            else:
                total += stat.st_size
    return total


@contextlib.contextmanager
def _writer_lock(directory: int) -> Iterator[bool]:
    """Whether the workflow's writer lock could be taken (held until the block ends): a
    workflow whose lock is held has a live writer."""
    try:
        fd = os.open(LOCK_FILE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        yield True  # never run by a writer that locks
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prune(
    trace_dir: str | None,
    *,
    older_than: timedelta | None = None,
    statuses: frozenset[str] = frozenset(PRUNABLE),
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    root = resolve_trace_dir(trace_dir)
    now = now or datetime.now(UTC)
    pruned: list[Pruned] = []
    skipped: list[Skipped] = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise TraceDirMissing(str(root)) from None
    except OSError as exc:
        raise SourceUnavailable(str(root), exc.strerror or str(exc)) from None
    try:
        for name in sorted(os.listdir(root_fd)):
            if not is_workflow_id(name):
                continue
            try:
                mode = os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if S_ISLNK(mode):
                skipped.append(Skipped(name, "a symbolic link, not followed"))
                continue
            if not S_ISDIR(mode):
                continue
            item = _prune_one(root, root_fd, name, older_than, statuses, dry_run, now, skipped)
            if item is not None:
                pruned.append(item)
    finally:
        os.close(root_fd)
    return PruneReport(root, dry_run, tuple(pruned), tuple(skipped))


def _prune_one(
    root: Path,
    root_fd: int,
    name: str,
    older_than: timedelta | None,
    statuses: frozenset[str],
    dry_run: bool,
    now: datetime,
    skipped: list[Skipped],
) -> Pruned | None:
    try:
        directory = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd
        )
    except OSError as exc:
        skipped.append(Skipped(name, exc.strerror or str(exc)))
        return None
    try:
        with _writer_lock(directory) as free:
            if not free:
                skipped.append(Skipped(name, "its writer holds the lock"))
                return None
            # Read under the lock: no run can start (and write) while it is held.
            latest = summarize(name, root / name / TRACE_FILE_NAME).latest
            if latest is None:
                return None
            status = effective_status(latest)
            if status not in statuses:
                return None
            if older_than is not None and now - latest.updated_at < older_than:
                return None
            item = Pruned(name, status, latest.updated_at, _tree_size(directory))
            if not dry_run:
                shutil.rmtree(name, dir_fd=root_fd)  # fd-based: never follows a link
            return item
    finally:
        os.close(directory)


def report_lines(report: PruneReport, now: datetime) -> list[str]:
    verb = "would remove" if report.dry_run else "removed"
    lines = [
        f"{verb} {item.workflow_id:<20} {item.status:<10} "
        f"updated {age(seconds_between(item.updated_at, now)):>6} ago  {human_size(item.size):>10}"
        for item in report.pruned
    ]
    count = len(report.pruned)
    total = f"{count} workflow{'' if count == 1 else 's'}, {human_size(report.freed)}"
    lines.append(f"{'would free' if report.dry_run else 'freed'} {total} in {report.root}")
    return lines


def report_json(report: PruneReport) -> str:
    return json.dumps(
        {
            "trace_dir": str(report.root),
            "dry_run": report.dry_run,
            "removed": [
                {
                    "workflow_id": item.workflow_id,
                    "status": item.status,
                    "updated_at": item.updated_at.isoformat(),
                    "bytes": item.size,
                }
                for item in report.pruned
            ],
            "count": len(report.pruned),
            "bytes": report.freed,
            "skipped": [{"workflow_id": s.workflow_id, "reason": s.reason} for s in report.skipped],
        }
    )
