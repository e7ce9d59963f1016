"""``flowctl prune``: remove the traces of finished workflows, and say what it freed.

Only ``completed``, ``failed`` and ``lost`` workflows are removed — never ``running`` or
``unknown`` (another host's), never one whose writer lock is held (a run starting now),
never through a symbolic link. Prune always acts on files, also when flowctl talks to
flowd: the directory is ``--trace-dir`` or the default one.

A trace directory may hold anything (see the threat model), so everything goes through
``tracefiles``: the workflow directory is opened relative to the trace directory and never
through a link, ``writer.lock`` with the safe open (a FIFO or a link is never opened), and
the removal is by name relative to the open directories: ``trace.jsonl``, its parts and
``writer.lock``, then the directory once it is empty. A workflow whose directory or files
belong to another user, or whose directory holds anything else (an unknown file, a
subdirectory, a FIFO, a link), is skipped with the reason, never removed blindly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Final

from doeff_flow_core import effective_status
from doeff_flow_core.errors import NotRegularFile, SymlinkRefused
from doeff_flow_core.escape import safe
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.records import COMPLETED, FAILED, LOST
from doeff_flow_core.tracefiles.chain import FileId, file_id
from doeff_flow_core.tracefiles.layout import (
    LOCK_FILE_NAME,
    part_number,
    resolve_trace_dir,
)
from doeff_flow_core.tracefiles.safeopen import Directory, kind_of
from doeff_flow_core.tracefiles.scan import summarize_in
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


@dataclass(frozen=True)
class _Rules:
    older_than: timedelta | None
    statuses: frozenset[str]
    dry_run: bool
    now: datetime


class _Refused(Exception):
    """Why a workflow is left as it is (its ``Skipped`` reason)."""


def prune(
    trace_dir: str | None,
    *,
    older_than: timedelta | None = None,
    statuses: frozenset[str] = frozenset(PRUNABLE),
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    root = resolve_trace_dir(trace_dir)
    rules = _Rules(older_than, statuses, dry_run, now or datetime.now(UTC))
    pruned: list[Pruned] = []
    skipped: list[Skipped] = []
    try:
        top = Directory.open(root)
    except (FileNotFoundError, NotADirectoryError):
        raise TraceDirMissing(str(root)) from None
    except OSError as exc:
        raise SourceUnavailable(str(root), exc.strerror or str(exc)) from None
    with top:
        try:
            names = sorted(top.names())
        except OSError as exc:
            raise SourceUnavailable(str(root), exc.strerror or str(exc)) from None
        for name in names:
            if not is_workflow_id(name):
                continue
            try:
                item = _prune_one(top, name, rules)
            except _Refused as refused:
                skipped.append(Skipped(name, safe(str(refused))))
                continue
            if item is not None:
                pruned.append(item)
    return PruneReport(root, dry_run, tuple(pruned), tuple(skipped))


def _prune_one(top: Directory, name: str, rules: _Rules) -> Pruned | None:
    """The workflow ``name`` pruned (or, on a dry run, found prunable); None when it is
    not to be pruned (not finished, filtered out, gone); _Refused when it must be left."""
    try:
        mode = top.lstat(name).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Refused(exc.strerror or str(exc)) from None
    if S_ISLNK(mode):
        raise _Refused("a symbolic link, not followed")
    if not S_ISDIR(mode):
        return None
    try:
        directory = top.subdirectory(name)
    except FileNotFoundError:
        return None
    except SymlinkRefused:
        raise _Refused("a symbolic link, not followed") from None
    except OSError as exc:
        raise _Refused(exc.strerror or str(exc)) from None
    with directory:
        status = os.fstat(directory.fd)
        if status.st_uid != os.geteuid():
            raise _Refused(f"owned by another user (uid {status.st_uid})")
        try:
            with _writer_lock(directory):
                # Read under the lock: no run can start (and write) while it is held.
                return _prune_locked(top, directory, name, file_id(status), rules)
        except OSError as exc:  # the directory cannot be listed, say
            raise _Refused(exc.strerror or str(exc)) from None


@contextlib.contextmanager
def _writer_lock(directory: Directory) -> Iterator[None]:
    """The workflow's writer lock, taken (and held until the block ends), or _Refused: a
    workflow whose lock is held has a live writer. The lock is opened with the safe open,
    so a FIFO, a device or a link in its place is refused, never opened."""
    try:
        fd = directory.open_file(LOCK_FILE_NAME, os.O_RDONLY)
    except FileNotFoundError:
        yield  # never run by a writer that locks
        return
    except OSError as exc:
        raise _Refused(_not_regular(LOCK_FILE_NAME, exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Refused("its writer holds the lock") from None
        except OSError as exc:
            raise _Refused(f"{LOCK_FILE_NAME}: {exc.strerror or exc}") from None
        yield
    finally:
        os.close(fd)


def _not_regular(name: str, error: OSError) -> str:
    if isinstance(error, SymlinkRefused):
        return f"{name} is a symbolic link, not a regular file"
    if isinstance(error, NotRegularFile):
        return f"{name} is {error.kind}, not a regular file"
    return f"{name}: {error.strerror or error}"


def _prune_locked(
    top: Directory, directory: Directory, name: str, ident: FileId, rules: _Rules
) -> Pruned | None:
    summary = summarize_in(top, name)
    if _ident_in(top, name) != ident:
        raise _Refused("replaced while it was read")
    latest = summary.latest
    if latest is None:
        _own_files(directory)  # a FIFO or a link in the way is said by name
        raise _Refused(summary.problem or "no record")
    status = effective_status(latest)
    if status not in rules.statuses:
        return None
    if rules.older_than is not None and rules.now - latest.updated_at < rules.older_than:
        return None
    files = _own_files(directory)
    item = Pruned(name, status, latest.updated_at, sum(files.values()))
    if not rules.dry_run:
        _remove(top, directory, name, ident, files)
    return item


def _ident_in(top: Directory, name: str) -> FileId | None:
    try:
        return file_id(top.lstat(name))
    except OSError:
        return None


def _own_files(directory: Directory) -> dict[str, int]:
    """The workflow's files (``trace.jsonl``, its parts, ``writer.lock``) with their
    sizes; _Refused when the directory holds anything else, or any of them is not a
    regular file of this user's."""
    files: dict[str, int] = {}
    problems: list[str] = []
    uid = os.geteuid()
    for entry in sorted(directory.names()):
        try:
            status = directory.lstat(entry)
        except FileNotFoundError:
            continue
        kind = kind_of(status.st_mode)
        if entry != LOCK_FILE_NAME and part_number(entry) is None:
            problems.append(f"{entry} is {kind}, not a trace file")
        elif not S_ISREG(status.st_mode):
            problems.append(f"{entry} is {kind}, not a regular file")
        elif status.st_uid != uid:
            problems.append(f"{entry} is owned by another user (uid {status.st_uid})")
        else:
            # what removing it frees: a sparse file holds fewer blocks than its size says
            files[entry] = min(status.st_size, status.st_blocks * 512)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _Refused(problems[0] + more)
    return files


def _remove(
    top: Directory, directory: Directory, name: str, ident: FileId, files: dict[str, int]
) -> None:
    """Unlink the workflow's own files by name in its open directory (the lock last: it
    is held until then, so no run starts meanwhile), then the directory if it is empty
    and still the one opened. An unlink never follows a link, and only these names go."""
    removed = 0
    try:
        for entry in sorted(files, key=lambda entry: entry == LOCK_FILE_NAME):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=directory.fd)
            removed += 1
        left = sorted(directory.names())
        if left:
            raise _Refused(f"partly removed: {left[0]} appeared meanwhile")
        if _ident_in(top, name) != ident:
            raise _Refused("partly removed: its directory was replaced meanwhile")
        os.rmdir(name, dir_fd=top.fd)
    except OSError as exc:
        done = "partly removed" if removed else "not removed"
        raise _Refused(f"{done}: {exc.strerror or exc}") from None


def report_lines(report: PruneReport, now: datetime) -> list[str]:
    verb = "would remove" if report.dry_run else "removed"
    lines = [
        f"{verb} {item.workflow_id:<20} {item.status:<10} "
        f"updated {age(seconds_between(item.updated_at, now)):>6} ago  {human_size(item.size):>10}"
        for item in report.pruned
    ]
    count = len(report.pruned)
    total = f"{count} workflow{'' if count == 1 else 's'}, {human_size(report.freed)}"
    where = safe(str(report.root))
    lines.append(f"{'would free' if report.dry_run else 'freed'} {total} in {where}")
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
