"""The chain of one trace's files: ``trace.jsonl.N`` (oldest) ... ``trace.jsonl.1``,
``trace.jsonl`` (newest).

The writer rotates by renaming (``.k`` to ``.k+1``, then ``trace.jsonl`` to ``.1``), so
a file keeps its identity (device, inode) from name to name: a reader remembers a file
by its identity and finds it again among the parts. Parts are found by listing the
directory, so a gap in the numbering (a writer killed mid-rotation) hides nothing. A
name that is not a regular file (a link, a FIFO, a directory) is no part: it is
reported in ``problems``, never opened.
"""

from __future__ import annotations

import errno
import os
import stat as st
from dataclasses import dataclass
from typing import Final

from doeff_flow_core.errors import NotRegularFile, SymlinkRefused
from doeff_flow_core.tracefiles.layout import TRACE_FILE_NAME, part_name, part_number
from doeff_flow_core.tracefiles.safeopen import Directory, kind_of

FileId = tuple[int, int]  # (st_dev, st_ino)
SNAPSHOT_TRIES: Final = 50


def file_id(status: os.stat_result) -> FileId:
    return (status.st_dev, status.st_ino)


@dataclass(frozen=True, slots=True)
class Part:
    number: int  # 0: trace.jsonl
    ident: FileId
    size: int

    @property
    def name(self) -> str:
        return part_name(self.number)


@dataclass(frozen=True)
class Chain:
    """The parts newest first, and the names that were refused with their modes."""

    parts: tuple[Part, ...] = ()
    refused: tuple[tuple[str, int], ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        """``trace.jsonl: a FIFO (not read)`` for each name refused."""
        return tuple(f"{name}: {kind_of(mode)} (not read)" for name, mode in self.refused)

    def missing(self, directory: str) -> OSError:
        """Why there is no part to read: the first name refused, or no file at all."""
        for name, mode in self.refused:
            if st.S_ISLNK(mode):
                return SymlinkRefused(os.path.join(directory, name))
            return NotRegularFile(os.path.join(directory, name), kind_of(mode))
        return FileNotFoundError(errno.ENOENT, "no trace", os.path.join(directory, TRACE_FILE_NAME))

    def index_of(self, ident: FileId) -> int | None:
        for index, part in enumerate(self.parts):
            if part.ident == ident:
                return index
        return None

    def find(self, ident: FileId) -> Part | None:
        index = self.index_of(ident)
        return None if index is None else self.parts[index]

    def newer(self, ident: FileId) -> Part | None:
        """The part written after ``ident`` (None: it is the newest, or not here)."""
        index = self.index_of(ident)
        return None if not index else self.parts[index - 1]

    @property
    def newest(self) -> Part | None:
        return self.parts[0] if self.parts else None

    @property
    def oldest(self) -> Part | None:
        return self.parts[-1] if self.parts else None

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)

    def _key(self) -> tuple[tuple[int, FileId], ...]:
        return tuple((part.number, part.ident) for part in self.parts)


def look(directory: Directory) -> Chain:
    r"""One look: the directory listed, each part ``lstat``\ ed. Not atomic: a rotation
    meanwhile can show a file twice, or a gap it closes a moment later."""
    numbered: list[tuple[int, str]] = []
    for name in directory.names():
        number = part_number(name)
        if number is not None:
            numbered.append((number, name))
    parts: list[Part] = []
    refused: list[tuple[str, int]] = []
    for number, name in sorted(numbered):
        try:
            status = directory.lstat(name)
        except OSError:
            continue  # gone meanwhile
        if st.S_ISREG(status.st_mode):
            parts.append(Part(number, file_id(status), status.st_size))
        else:
            refused.append((name, status.st_mode))
    return Chain(tuple(parts), tuple(refused))


def chain_of(directory: Directory) -> Chain:
    """The chain as it stood at one moment: looked at until two looks in a row agree and
    show no file twice (a gap two looks agree on is one a killed writer left)."""
    last = look(directory)
    for _ in range(SNAPSHOT_TRIES):
        now = look(directory)
        idents = [part.ident for part in now.parts]
        if now._key() == last._key() and len(set(idents)) == len(idents):
            return now
        last = now
    return last


def open_part(directory: Directory, ident: FileId) -> tuple[int, Part] | None:
    """The file ``ident`` of the chain opened for reading, and its part; None when it is
    no longer in the chain. A rotation between finding and opening it is looked at
    again."""
    for _ in range(SNAPSHOT_TRIES):
        part = chain_of(directory).find(ident)
        if part is None:
            return None
        try:
            fd = directory.open_file(part.name)
        except FileNotFoundError:
            continue
        status = os.fstat(fd)
        if file_id(status) == ident:
            return fd, Part(part.number, ident, status.st_size)
        os.close(fd)
    return None
