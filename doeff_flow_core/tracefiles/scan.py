"""Every workflow of a trace directory with its latest record (``flowctl ps`` from the
files): one small read from the end of each trace, by worker processes when there are
many, parsed here by the one record parser; and what a workflow's summary says.

A directory whose trace cannot be read is listed with its problem, never hidden, and
never read through a link; a record that names another workflow is listed under its
directory's name.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.ids import is_workflow_id
from doeff_flow_core.protocol import EMPTY_TRACE, NO_TRACE, NO_VALID_RECORDS
from doeff_flow_core.records import LiveTrace, parse_record
from doeff_flow_core.tracefiles.chain import FileId, chain_of, file_id
from doeff_flow_core.tracefiles.cursor import tail
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME
from doeff_flow_core.tracefiles.lines import (
    FIRST_BLOCK,
    is_blank,
    may_have_holes,
)
from doeff_flow_core.tracefiles.reading import parse_line
from doeff_flow_core.tracefiles.safeopen import Directory

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext
    from multiprocessing.process import BaseProcess


@dataclass(frozen=True)
class WorkflowSummary:
    workflow_id: str
    trace_dir: str
    latest: LiveTrace | None
    problem: str | None = None

    @property
    def path(self) -> Path:
        """The workflow's ``trace.jsonl``."""
        return Path(self.trace_dir, self.workflow_id, TRACE_FILE_NAME)


MAX_SHOWN_ID: Final = 100  # of another id a record gives, in its problem


def id_problem(name: str, record: LiveTrace) -> str | None:
    """What is wrong with ``record`` as the latest of directory ``name``: None, or that it
    names another workflow. Such a workflow is listed under its directory's name, never
    the one its records give (anyone who can write the trace can write anything there)."""
    if record.workflow_id == name:
        return None
    return f"record says workflow_id {record.workflow_id[:MAX_SHOWN_ID]}"


def summary_of(name: str, trace_dir: str, record: LiveTrace) -> WorkflowSummary:
    return WorkflowSummary(name, trace_dir, record, id_problem(name, record))


PARALLEL_MIN: Final = 20_000
# Workflow names a worker reads before handing their lines back (about 650 KB of them
# for the core's records: a pipe of PIPE_BYTES holds them).
BATCH: Final = 1000
# Workers are forked by multiprocessing's fork server, which has this module imported
# once for all of them; never a plain fork: the caller may have threads.
START_METHOD: Final = "forkserver"
PIPE_BYTES: Final = 1024 * 1024  # the most an unprivileged process may ask for (Linux)


def scan_workflows(
    trace_dir: str | os.PathLike[str], *, processes: int = 1
) -> list[WorkflowSummary]:
    """Every workflow directory under ``trace_dir`` with its latest record, sorted by id.

    A directory whose trace cannot be read is listed with ``problem`` set, so one bad
    trace never hides the others; links are not followed. Each trace costs one small
    read from its end (more only when its end holds no valid record).

    With ``processes`` > 1 and more than PARALLEL_MIN workflows, that many worker
    processes read the traces' ends while this one parses them: the same list, sooner
    where there are cores to spare. They are started as ``multiprocessing`` starts
    them, so the caller's main module must be safe to import.
    """
    with Directory.open(trace_dir) as root:
        names = sorted(name for name in root.subdirectories() if is_workflow_id(name))
        if processes > 1 and len(names) > PARALLEL_MIN:
            return _scan_in_parallel(root, names, processes)
        return [summarize_in(root, name) for name in names]


def _scan_in_parallel(root: Directory, names: list[str], processes: int) -> list[WorkflowSummary]:
    """``scan_workflows`` with workers. The names are cut into batches, dealt out in
    turn; each worker hands back, batch by batch, the last line of each trace
    (``_last_lines``), which is parsed here by the one parser. A workflow whose last
    line is no record, that a worker could not read simply, or whose worker is gone or
    could not be started, is summarized here as a sequential scan does it: the list is
    the same."""
    import multiprocessing  # only here: most scans never need it

    identity = file_id(os.fstat(root.fd))
    batches = [names[i : i + BATCH] for i in range(0, len(names), BATCH)]
    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload([__name__])
    workers: list[tuple[BaseProcess, Connection]] = []
    summaries: list[WorkflowSummary] = []
    try:
        for first in range(min(processes, len(batches))):
            started = _start_worker(context, root.path, identity)
            if started is None:
                break  # the batches of this worker and the next are read here
            worker, from_worker, to_worker = started
            workers.append((worker, from_worker))
            _enlarge(from_worker)
            _send(to_worker, batches[first::processes])
        for number, batch in enumerate(batches):
            lines: list[bytes | None] = [None] * len(batch)
            if number % processes < len(workers):
                try:
                    lines = workers[number % processes][1].recv()
                except (EOFError, OSError):
                    pass  # the worker is gone
            for name, line in zip(batch, lines, strict=True):
                record = None if line is None else _record(line)
                if record is None:
                    summaries.append(summarize_in(root, name))
                else:
                    summaries.append(summary_of(name, root.path, record))
    finally:  # however the scan ends (Ctrl-C too), no worker outlives it
        for process, from_process in workers:
            from_process.close()
            if process.is_alive():
                process.terminate()
            process.join()
    return summaries


def _start_worker(
    context: ForkServerContext, path: str, identity: FileId
) -> tuple[BaseProcess, Connection, Connection] | None:
    """A worker, the end of the pipe its lines come by, and that of the pipe its names
    go by; None when it cannot be started."""
    tasks, to_worker = context.Pipe(duplex=False)
    from_worker, results = context.Pipe(duplex=False)
    worker = context.Process(target=_read_ends, args=(tasks, results, path, identity))
    worker.daemon = True
    try:
        worker.start()
    except BaseException as exc:
        from_worker.close()
        to_worker.close()
        if isinstance(exc, OSError | EOFError):  # EOFError: the fork server could not fork
            return None
        raise
    finally:
        tasks.close()
        results.close()
    return worker, from_worker, to_worker


def _send(to_worker: Connection, batches: list[list[str]]) -> None:
    """A worker's names, sent while it starts up."""
    try:
        _enlarge(to_worker)
        to_worker.send(batches)
    except OSError:
        pass  # gone already: nothing will come from it
    finally:
        to_worker.close()


def _enlarge(connection: Connection) -> None:
    """A pipe that holds a batch's lines (or a worker's names) whole, where the system
    allows: the worker then reads its next batch while this process has yet to take
    the last, and this process sends the names without waiting for it to start."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setsize is not None:
        try:
            fcntl.fcntl(connection.fileno(), setsize, PIPE_BYTES)
        except OSError:
            pass  # over the user's allowance: a pipe of the default size


def _read_ends(tasks: Connection, results: Connection, path: str, identity: FileId) -> None:
    """A worker: ``_last_lines`` of each batch it is sent, in order. It opens the trace
    directory its parent has open; when that name now leads elsewhere (renamed
    meanwhile), it reads nothing, and the parent reads every trace."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        root: Directory | None = Directory.open(path)
    except OSError:
        root = None
    if root is not None and file_id(os.fstat(root.fd)) != identity:
        root.close()
        root = None
    try:
        batches: list[list[str]] = tasks.recv()
        for batch in batches:
            lines = [None] * len(batch) if root is None else _last_lines(root, batch)
            results.send(lines)
    except (EOFError, BrokenPipeError):
        pass  # the parent stopped listening
    finally:
        tasks.close()
        results.close()
        if root is not None:
            root.close()


def _last_lines(root: Directory, names: list[str]) -> list[bytes | None]:
    """The last complete line of each workflow's ``trace.jsonl`` (its latest record when
    the line is one), or None when ``_last_block`` finds none or the line is blank."""
    lines: list[bytes | None] = []
    for name in names:
        try:
            with root.subdirectory(name) as directory:
                block = _last_block(directory)
        except OSError:
            block = b""
        line = block[block.rfind(b"\n") + 1 :]
        lines.append(None if is_blank(line) else line)
    return lines


def summarize(workflow_id: str, path: str | os.PathLike[str]) -> WorkflowSummary:
    """One workflow's latest record (``path`` is its ``trace.jsonl``), or the problem
    (NO_TRACE, EMPTY_TRACE, NO_VALID_RECORDS, or the system's error) that leaves it
    without one."""
    trace = Path(path)
    try:
        with Directory.open(trace.parent.parent) as root:
            return summarize_in(root, trace.parent.name)
    except OSError as exc:
        return WorkflowSummary(
            workflow_id, str(trace.parent.parent), None, exc.strerror or str(exc)
        )


def _record(data: bytes) -> LiveTrace | None:
    try:
        return parse_record(data)
    except MalformedRecord:
        return None


def _last_block(directory: Directory) -> bytes:
    """The complete lines in the last block (FIRST_BLOCK bytes) of ``trace.jsonl``,
    newline-separated, read with one ``pread``: where the latest record of almost every
    trace lies. Empty when there is none there, or the file is missing, is not a regular
    file, may have holes, or shrank meanwhile: ``tail`` is then what reads it."""
    try:
        fd, status = directory.open_status(TRACE_FILE_NAME)
    except OSError:
        return b""
    try:
        size = status.st_size
        if may_have_holes(status):
            return b""
        start = max(0, size - FIRST_BLOCK)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    # After the last newline: a torn line, or one still being written. Before the first
    # (unless the block is the file's start): the end of a line that starts before it.
    end = data.rfind(b"\n")
    if len(data) != size - start or end < 0:
        return b""
    return data[:end] if start == 0 else data[data.find(b"\n") + 1 : end]


def _last_first(block: bytes) -> Iterator[bytes]:
    """The lines of ``block`` (as ``_last_block`` gives them), the last first."""
    end = len(block)
    while end > 0:
        cut = block.rfind(b"\n", 0, end)
        yield block[cut + 1 : end]
        end = cut


def summarize_in(root: Directory, workflow_id: str) -> WorkflowSummary:
    """``summarize`` for the workflow directory ``workflow_id`` of an open root."""
    trace_dir = root.path
    try:
        with root.subdirectory(workflow_id) as directory:
            for data in _last_first(_last_block(directory)):
                if not is_blank(data) and (record := _record(data)) is not None:
                    return summary_of(workflow_id, trace_dir, record)
            # Through the rotated parts: a writer killed just after a rotation leaves an
            # empty trace.jsonl, and its latest record in trace.jsonl.1.
            scan = tail(directory, 1, parse_line)
            if not scan.items:
                problems = chain_of(directory).problems
                empty = NO_VALID_RECORDS if scan.skipped or scan.torn else EMPTY_TRACE
                return WorkflowSummary(workflow_id, trace_dir, None, (*problems, empty)[0])
    except OSError as exc:
        problem = NO_TRACE if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        return WorkflowSummary(workflow_id, trace_dir, None, problem)
    return summary_of(workflow_id, trace_dir, scan.items[-1])
