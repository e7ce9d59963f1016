"""Record lines of trace files, kept as the bytes they are stored as.

flowd hands records out exactly as written, so it keeps each line's bytes (``Line.raw``)
with the few fields it needs to index, filter and resume (step, status, run, writer).
A line is a record when the core's parser accepts it (and it holds no NaN/Infinity,
which are not JSON); anything else is skipped and counted, never an error. A torn last
line (no newline yet) is not read until it is complete.

``split_lines`` is pure; the readers below open files and never read a whole file to
find its end: ``read_tail`` reads backwards in growing blocks.

A trace is a chain of files: ``trace.jsonl.N`` (oldest) ... ``trace.jsonl.1``,
``trace.jsonl`` (newest), rotated by the writer (rename .k to .k+1, trace.jsonl to .1).
A position in it is a file's identity (device, inode) and an offset: renaming keeps
both, so a reader finds the file it was reading among the parts (``find_part``) and goes
on from there to the next newer one (``read_on``). Files are opened by ``open_trace``:
never through a symbolic link (the workflow directory or the file), never anything but a
regular file (a FIFO would block), and only for reading. Memory stays bounded whatever a
file holds: forward reads take at most CHUNK bytes, backward reads give up a line once it
is longer than MAX_LINE_BYTES.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO, Final

from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.records import LiveTrace
from doeff_flow_core.tracefiles.lines import MAX_LINE_BYTES
from flowd.protocol import loads

FIRST_BLOCK: Final = 8 * 1024
MAX_BLOCK: Final = 1024 * 1024
CHUNK: Final = 4 * 1024 * 1024  # most bytes read forward in one call
MAX_PARTS: Final = 1000  # rotated parts looked at, at most

FileIdent = tuple[int, int]  # (st_dev, st_ino)
Position = tuple[FileIdent, int]  # a file of the chain and an offset in it


class Line:
    """One record: its stored bytes and the fields flowd indexes.

    ``record`` is the parsed record until the daemon has handed the line on (to the span
    exporter); then it is dropped, so the index keeps only bytes.
    """

    __slots__ = (
        "end",
        "host",
        "ident",
        "pid",
        "pid_start",
        "raw",
        "record",
        "run",
        "start",
        "status",
        "step",
        "updated",
    )

    def __init__(
        self, raw: bytes, record: LiveTrace, start: int, end: int, ident: FileIdent | None = None
    ) -> None:
        self.raw = raw
        self.record: LiveTrace | None = record
        self.ident = ident  # the file it was read from (None: not said)
        self.start = start  # file offset of this line's first byte
        self.end = end  # file offset just after this line's newline
        self.step = record.step
        self.status = record.status
        self.run = record.run
        self.pid = record.pid
        self.host = record.host
        self.pid_start = record.pid_start
        self.updated = record.updated_at.timestamp()


def parse_line(line: bytes, end: int, ident: FileIdent | None = None) -> Line | None:
    """The record on the line ending (newline included) at ``end``, stripped of surrounding
    whitespace; None if it is not a record."""
    raw = line.strip()
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        return Line(raw, LiveTrace.from_dict(loads(raw)), end - len(line) - 1, end, ident)
    except (ValueError, RecursionError, MalformedRecord):
        return None


@dataclass(frozen=True)
class Lines:
    """Records found between two offsets; ``end`` is just after the last complete line."""

    lines: list[Line]
    end: int
    skipped: int = 0


def split_lines(data: bytes, base: int, ident: FileIdent | None = None) -> Lines:
    """The complete lines of ``data``, which starts at file offset ``base`` (of the file
    ``ident``)."""
    cut = data.rfind(b"\n")
    if cut < 0:
        return Lines([], base)
    lines: list[Line] = []
    skipped = 0
    position = base
    for piece in data[:cut].split(b"\n"):
        position += len(piece) + 1
        if not piece.strip():
            continue
        line = parse_line(piece, position, ident)
        if line is None:
            skipped += 1
        else:
            lines.append(line)
    return Lines(lines, base + cut + 1, skipped)


class _Backward:
    """The complete lines before ``end``, last first, each with the offset after it."""

    def __init__(self, handle: BinaryIO, end: int) -> None:
        self._handle = handle
        self._position = end
        self._block = FIRST_BLOCK
        self.end_offset: int | None = None  # after the last complete line
        self.oversized = 0

    def _read(self) -> bytes:
        size = min(self._block, self._position)
        self._position -= size
        self._block = min(self._block * 2, MAX_BLOCK)
        self._handle.seek(self._position)
        return self._handle.read(size)

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        carry = b""  # the end of a line whose start lies in a block not read yet
        carry_end: int | None = None  # offset after carry's newline; None: seek a newline
        while self._position > 0:
            chunk = self._read()
            if carry_end is None:
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    continue
                carry_end = self._position + cut + 1
                if self.end_offset is None:
                    self.end_offset = carry_end
                chunk, carry = chunk[:cut], b""
            pieces = (chunk + carry).split(b"\n")
            ends = [carry_end]
            for piece in reversed(pieces[1:]):
                ends.append(ends[-1] - len(piece) - 1)
            # ends[i] is the end of pieces[-1 - i]; ends[-1] that of pieces[0]
            for index in range(len(pieces) - 1, 0, -1):
                yield pieces[index], ends[len(pieces) - 1 - index]
            carry, carry_end = pieces[0], ends[-1]
            if len(carry) > MAX_LINE_BYTES:
                self.oversized += 1  # bounded memory: give the line up
                carry, carry_end = b"", None
        if carry_end is not None:
            yield carry, carry_end


@dataclass(frozen=True)
class Tail:
    """The last records of a file (oldest first) and what the file looked like."""

    lines: list[Line]
    end: int  # just after the last complete line (0 if there is none)
    size: int
    ident: FileIdent
    skipped: int = 0

    @property
    def torn(self) -> bool:
        return self.size > self.end


def ident_of(stat: os.stat_result) -> FileIdent:
    return (stat.st_dev, stat.st_ino)


_NOT_REGULAR: Final = "not a regular file"
_SYMLINK: Final = "a symbolic link (not followed)"


def open_trace(path: str) -> BinaryIO:
    """``path`` opened for reading: neither its directory nor the file itself may be a
    symbolic link, and it must be a regular file (OSError otherwise, with a reason)."""
    directory, name = os.path.split(path)
    nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(directory, nofollow | os.O_DIRECTORY)
    except OSError as exc:
        raise _refused(exc, directory) from None
    try:
        fd = os.open(name, nofollow | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise _refused(exc, path) from None
    finally:
        os.close(dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not S_ISREG(mode):
            raise OSError(errno.EINVAL, _NOT_REGULAR, path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refused(error: OSError, path: str) -> OSError:
    """ELOOP (O_NOFOLLOW met a link) and ENOTDIR (a link to a file) said plainly."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
        return OSError(errno.ELOOP, _SYMLINK, path)
    return error


def read_tail(path: str, n: int, end: int | None = None) -> Tail:
    """The last ``n`` records before ``end`` (default: the end of the file)."""
    with open_trace(path) as handle:
        return tail_of(handle, n, end)


def tail_of(handle: BinaryIO, n: int, end: int | None = None) -> Tail:
    """``read_tail`` on a file already open."""
    stat = os.fstat(handle.fileno())
    ident = ident_of(stat)
    limit = stat.st_size if end is None else min(end, stat.st_size)
    backward = _Backward(handle, limit)
    found: list[Line] = []
    skipped = 0
    for raw, line_end in backward if n > 0 else ():
        if not raw.strip():
            continue
        line = parse_line(raw, line_end, ident)
        if line is None:
            skipped += 1
            continue
        found.append(line)
        if len(found) >= n:
            break
    found.reverse()
    last = backward.end_offset or 0
    return Tail(found, last, stat.st_size, ident, skipped + backward.oversized)


def resume_offset(path: str, run: str | None, step: int, end: int) -> int:
    """Where to resume after the record (``run``, ``step``) that a client last saw.

    The offset just after the last record of that run whose step is at most ``step``;
    0 (everything) when the file holds no such record, so nothing is ever skipped.
    """
    with open_trace(path) as handle:
        found = _find_after(handle, run, step, end)
    return 0 if found is None else found


def _find_after(handle: BinaryIO, run: str | None, step: int, end: int) -> int | None:
    for raw, line_end in _Backward(handle, end):
        if not raw.strip():
            continue
        line = parse_line(raw, line_end)
        if line is not None and line.run == run and line.step <= step:
            return line_end
    return None


def resume_from(lines: list[Line], run: str | None, step: int) -> list[Line]:
    """``resume_offset`` over records in memory."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].run == run and lines[index].step <= step:
            return lines[index + 1 :]
    return lines


def read_range(
    path: str, start: int, end: int, ident: FileIdent | None, limit: int = CHUNK
) -> Lines | None:
    """Records between ``start`` and ``end``, reading about ``limit`` bytes (more when one
    line is longer, up to CHUNK); None when the file at ``path`` is no longer the one
    identified by ``ident``, or has shrunk."""
    with open_trace(path) as handle:
        actual = ident_of(os.fstat(handle.fileno()))
        if ident is not None and actual != ident:
            return None
        return range_of(handle, start, end, actual, limit)


def range_of(
    handle: BinaryIO, start: int, end: int, ident: FileIdent, limit: int = CHUNK
) -> Lines | None:
    """``read_range`` on a file already open (and known to be ``ident``)."""
    while True:
        want = min(limit, end - start)
        handle.seek(start)
        data = handle.read(want)
        if len(data) < want:
            return None
        found = split_lines(data, start, ident)
        if found.end > start or want == 0:
            return found
        if want >= min(CHUNK, end - start):
            return Lines([], start + want, 1)  # no newline in a whole chunk: skip it
        limit = min(CHUNK, limit * 4)


# -- the chain of rotated parts ---------------------------------------------------------


def part_path(path: str, index: int) -> str:
    """``trace.jsonl`` (index 0) or its ``index``-th newest rotated part."""
    return path if index == 0 else f"{path}.{index}"


def _ident_at(path: str) -> FileIdent | None:
    try:
        return ident_of(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


Chain = dict[int, FileIdent]  # part number (0: ``trace.jsonl``) -> the file there
SNAPSHOT_TRIES: Final = 50


def _look(path: str) -> Chain:
    r"""One look at the chain: the directory listed, each part ``lstat``\ ed. Not atomic:
    a rotation meanwhile can show a file twice, or a gap it closes a moment later."""
    directory, name = os.path.split(path)
    prefix = name + "."
    numbers: list[int] = []
    try:
        with os.scandir(directory or ".") as entries:
            for item in entries:
                if item.name == name:
                    numbers.append(0)
                    continue
                number = item.name[len(prefix) :]
                if (
                    item.name.startswith(prefix)
                    and number.isdigit()
                    and number == str(int(number))
                    and 0 < int(number) <= MAX_PARTS
                ):
                    numbers.append(int(number))
    except OSError:
        return {}
    found: Chain = {}
    for index in sorted(numbers):
        ident = _ident_at(part_path(path, index))
        if ident is not None:
            found[index] = ident
    return found


def chain_of(path: str) -> Chain:
    """The files of the chain as they stood at one moment: looked at until two looks in
    a row agree and show no file twice (the writer renames the parts one by one, so one
    look during a rotation can see a file at two numbers, or a gap that is closing; a
    gap two looks agree on is one a killed writer left, and hides nothing: the parts are
    found by listing)."""
    last = _look(path)
    for _ in range(SNAPSHOT_TRIES):
        now = _look(path)
        if now == last and len(set(now.values())) == len(now):
            return now
        last = now
    return last


def _newest_first(chain: Chain) -> list[tuple[int, FileIdent]]:
    return sorted(chain.items())


def find_part(path: str, ident: FileIdent) -> int | None:
    """Which file of the chain is ``ident`` now (0: ``path`` itself), or None."""
    return _number_in(chain_of(path), ident)


def _number_in(chain: Chain, ident: FileIdent) -> int | None:
    for number, found in chain.items():
        if found == ident:
            return number
    return None


def newer_part(path: str, ident: FileIdent) -> FileIdent | None:
    """The file written after ``ident`` in the chain (None: ``ident`` is the newest, or
    is no longer in the chain). Found in one consistent look, so a rotation meanwhile
    never makes a part be skipped."""
    chain = chain_of(path)
    number = _number_in(chain, ident)
    if not number:
        return None
    newer = [found for index, found in _newest_first(chain) if index < number]
    return newer[-1] if newer else None


def open_part(path: str, ident: FileIdent) -> tuple[BinaryIO, int] | None:
    """The file ``ident`` of the chain opened, and its number; None when it is no longer
    in the chain. A rotation between finding and opening it is looked at again."""
    for _ in range(SNAPSHOT_TRIES):
        number = find_part(path, ident)
        if number is None:
            return None
        try:
            handle = open_trace(part_path(path, number))
        except FileNotFoundError:
            continue
        if ident_of(os.fstat(handle.fileno())) == ident:
            return handle, number
        handle.close()
    return None


def chain_extent(path: str) -> tuple[FileIdent | None, int]:
    """The oldest file of the chain and the size of every file in it."""
    oldest, total = None, 0
    for number, ident in _newest_first(chain_of(path)):
        try:
            stat = os.stat(part_path(path, number), follow_symlinks=False)
        except OSError:
            continue
        oldest, total = ident, total + stat.st_size
    return oldest, total


def oldest_part(path: str) -> FileIdent | None:
    """The oldest file of the chain (``path`` itself when nothing was rotated)."""
    parts = _newest_first(chain_of(path))
    return parts[-1][1] if parts else None


@dataclass(frozen=True)
class Step:
    """Records read along the chain and the position just after them."""

    lines: list[Line]
    position: Position
    skipped: int = 0


def read_on(path: str, position: Position, until: Position, limit: int = CHUNK) -> Step | None:
    """Records from ``position`` toward ``until`` (both in the chain of ``path``), about
    ``limit`` bytes of them; a finished rotated part is left for the next newer file.
    None when the file of ``position`` is not in the chain (any more), or changed."""
    ident, offset = position
    opened = open_part(path, ident)
    if opened is None:
        return None
    handle, _ = opened
    with handle:
        stat = os.fstat(handle.fileno())
        end = until[1] if ident == until[0] else stat.st_size
        found = range_of(handle, offset, end, ident, limit)
    if found is None:
        return None
    if ident == until[0] or found.end < end:
        return Step(found.lines, (ident, found.end), found.skipped)
    newer = newer_part(path, ident)  # finished: which is the next newer file?
    if newer is None:
        return Step(found.lines, (ident, found.end), found.skipped)
    return Step(found.lines, (newer, 0), found.skipped)


def _parts_from(path: str, until: Position | None) -> tuple[list[FileIdent], bool]:
    """The files of the chain from that of ``until`` (default: ``path``) to the oldest,
    newest first, in one consistent look; and whether ``until``'s file is among them."""
    parts = _newest_first(chain_of(path))
    start = None if until is None else _number_in(dict(parts), until[0])
    return [ident for number, ident in parts if number >= (start or 0)], start is not None


def resume_position(path: str, run: str | None, step: int, until: Position) -> Position:
    """``resume_offset`` along the chain: just after the last record of ``run`` whose
    step is at most ``step``, in the file of ``until`` (before its offset) or in an older
    part; without one, the start of the oldest part, so nothing is ever skipped."""
    parts, _ = _parts_from(path, until)
    oldest = until
    for ident in parts:
        opened = open_part(path, ident)
        if opened is None:
            continue  # dropped meanwhile
        handle, _ = opened
        with handle:
            end = until[1] if ident == until[0] else os.fstat(handle.fileno()).st_size
            found = _find_after(handle, run, step, end)
        if found is not None:
            return (ident, found)
        oldest = (ident, 0)
    return (oldest[0], 0)


def read_history(path: str, n: int, until: Position | None) -> Tail:
    """The last ``n`` records of the chain before ``until`` (default: the end of ``path``),
    oldest first, reading older parts only while fewer were found; ``skipped`` counts
    the malformed lines met in every file read. ``end``/``size``/``ident`` are those of
    the first file read."""
    parts, _ = _parts_from(path, until)
    lines: list[Line] = []
    skipped = 0
    first: Tail | None = None
    for ident in parts:
        if len(lines) >= n and first is not None:
            break
        opened = open_part(path, ident)
        if opened is None:
            continue
        handle, _ = opened
        with handle:
            end = until[1] if until is not None and ident == until[0] else None
            tail = tail_of(handle, n - len(lines), end)
        first = first or tail
        lines[:0] = tail.lines
        skipped += tail.skipped
    if first is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    return Tail(lines, first.end, first.size, first.ident, skipped)
