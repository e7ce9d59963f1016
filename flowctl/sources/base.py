"""The data-source interface: where flowctl gets workflows and records from.

One interface, interchangeable implementations (as prompt-toolkit's ``History`` /
``FileHistory``): ``FileSource`` reads trace files; ``DaemonSource`` answers the same
calls over flowd's socket. Nothing here names a file: workflows are named by id,
and live views are ``Feed`` objects that are polled, which a socket subscription
(a snapshot, then pushed records) implements as naturally as a file tail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from doeff_flow_core import LiveTrace, effective_status
from doeff_flow_core.protocol import EMPTY_TRACE, NO_TRACE
from doeff_flow_core.tracefiles.scan import id_problem

# Statuses of a workflow entry that has no record to derive a status from.
EMPTY: Final = "empty"  # no trace file yet, or nothing complete written in it
UNREADABLE: Final = "unreadable"  # the trace holds no valid record, or cannot be read
# How many of the latest records a live feed starts with (so each live task is seen).
DEFAULT_SNAPSHOT: Final = 200


@dataclass(frozen=True)
class WorkflowEntry:
    """One workflow as ``ps`` lists it.

    ``status`` is the effective status (``lost`` / ``unknown`` derived from a running
    record), or EMPTY / UNREADABLE when there is no record; ``problem`` says why.
    """

    workflow_id: str
    latest: LiveTrace | None
    status: str
    problem: str | None = None
    # Set only where the same id is listed under more than one root (the daemon, not
    # scoped to one trace directory): the entry is then named ``id@root``.
    root: str | None = None

    @property
    def name(self) -> str:
        return self.workflow_id if self.root is None else qualified(self.workflow_id, self.root)


def qualified(workflow_id: str, root: str) -> str:
    """``wf-001@/home/me/proj/.doeff-flow``: one workflow among several of that id."""
    return f"{workflow_id}@{root}"


def split_name(name: str) -> tuple[str, str | None]:
    """``(workflow_id, root)`` from a name ``qualified`` made, else ``(name, None)``."""
    workflow_id, at, root = name.partition("@")
    return (workflow_id, root) if at and root.startswith("/") else (name, None)


def workflow_entry(
    workflow_id: str,
    latest: LiveTrace | None,
    problem: str | None,
    status: str | None = None,
    root: str | None = None,
) -> WorkflowEntry:
    """The entry for a workflow's latest record (its effective status: ``status`` when
    known, else derived now), or for the problem that leaves it without one (the core's
    and flowd's words: ``no trace.jsonl``, ``empty trace``, ``no valid records``, or the
    system's error). A record that names another workflow comes with its problem too."""
    if latest is not None:
        status = status or effective_status(latest)
        problem = problem or id_problem(workflow_id, latest)  # whoever sent it said so, or not
        return WorkflowEntry(workflow_id, latest, status, problem, root)
    nothing_yet = problem in (NO_TRACE, EMPTY_TRACE)
    return WorkflowEntry(workflow_id, None, EMPTY if nothing_yet else UNREADABLE, problem, root)


@dataclass(frozen=True)
class History:
    """The last records of one workflow, oldest first."""

    workflow_id: str
    records: tuple[LiveTrace, ...]
    skipped: int = 0  # malformed lines met while reading them
    torn: bool = False  # a partial last line was left out


@dataclass(frozen=True)
class FeedUpdate:
    """What a ``Feed`` learned since the last poll.

    ``records`` are new records, oldest first (the first update is a snapshot of the
    latest ones). ``present`` is False while the workflow has no trace yet. ``reset``
    says the trace was replaced or truncated: forget what was known before ``records``.
    """

    records: tuple[LiveTrace, ...] = ()
    present: bool = True
    reset: bool = False
    skipped: int = 0


@dataclass(frozen=True)
class DirectoryUpdate:
    """What a ``DirectoryFeed`` learned: changed workflows and the ones that went away."""

    changed: tuple[WorkflowEntry, ...] = ()
    removed: tuple[str, ...] = ()
    present: bool = True  # False while the trace directory does not exist
    first: bool = field(default=False)  # the first update lists every workflow


class Notes:
    """What a source says of itself while a view runs (flowd went away, came back): each
    line once for a plain view's stderr (``take``), and the one a full screen keeps on
    its status line (``current``) until ``expires`` seconds after it was said, if given."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._current: str | None = None
        self._until: float | None = None

    def say(self, line: str, expires: float | None = None) -> None:
        self._pending.append(line)
        self._current = line
        self._until = None if expires is None else time.monotonic() + expires

    def take(self) -> list[str]:
        """The lines said since the last call."""
        taken, self._pending = self._pending, []
        return taken

    @property
    def current(self) -> str | None:
        if self._until is not None and time.monotonic() >= self._until:
            self._current = self._until = None
        return self._current


class Feed(Protocol):
    """Live records of one workflow."""

    def poll(self, timeout: float) -> FeedUpdate:
        """News since the last poll; waits up to ``timeout`` seconds when there is none."""
        ...

    def pace(self, interval: float) -> float:
        """How long to wait before the next ``poll(0)`` when asked for ``interval``."""
        ...

    def close(self) -> None: ...


class DirectoryFeed(Protocol):
    """Live latest records of every workflow."""

    def poll(self, timeout: float) -> DirectoryUpdate: ...

    def pace(self, interval: float) -> float: ...

    def close(self) -> None: ...


class Source(Protocol):
    """Workflows and their records, from trace files or from the daemon."""

    @property
    def kind(self) -> str:
        """``files`` or ``daemon``, as the shell's toolbar shows it."""
        ...

    @property
    def location(self) -> str:
        """Where the data comes from, for messages: a directory or a socket."""
        ...

    def list_workflows(self) -> list[WorkflowEntry]:
        """Every workflow, sorted by id; an unreadable one is listed with its problem."""
        ...

    def workflow_ids(self) -> list[str]:
        """The ids alone, cheaply (for completion)."""
        ...

    def history(self, workflow_id: str, last: int) -> History:
        """The last ``last`` records (WorkflowNotFound, TraceUnreadable)."""
        ...

    def trace_path(self, workflow_id: str) -> Path:
        """The workflow's ``trace.jsonl``, to be read whole by this process (``export``);
        WorkflowNotFound when neither it nor a rotated part exists."""
        ...

    def status(self, record: LiveTrace) -> str:
        """The effective status of ``record`` now: ``lost`` when its writer is gone."""
        ...

    def follow(self, workflow_id: str, *, snapshot: int = ..., every_record: bool = False) -> Feed:
        """A feed of the workflow's records: the last ``snapshot`` ones, then what lands.

        With ``every_record`` no record is passed over (``history --follow``); without,
        a feed that falls far behind may jump to the latest records (``watch``).
        """
        ...

    def follow_all(self) -> DirectoryFeed:
        """A feed of every workflow's latest record."""
        ...
