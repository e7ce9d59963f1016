"""Output files that appear whole or not at all.

``replaced_whole(path)`` writes beside ``path`` under a temporary name and renames it
into place once everything is written, so an export that fails half way (a bad trace, a
full disk, Ctrl-C) leaves the old file, or none, never half a new one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from flowctl.errors import OutputUnwritable

STDOUT_NAME = "-"


def _strerror(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _new_file_mode() -> int:
    # mkstemp makes 0600; a new export gets the usual 0666 less the umask, as open() would.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _text(fd: int) -> TextIO:
    # Lone surrogates (possible in JSON from a trace) become \udXXX escapes, which JSON
    # reads back as the same string, rather than an encoding error half way.
    return open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="")


@contextlib.contextmanager
def replaced_whole(path: str) -> Iterator[TextIO]:
    """A text stream that becomes ``path`` when the block ends without an exception.

    A symbolic link is written through (the file it names is replaced); a device or FIFO
    (``/dev/null``) is written directly. Any OSError on the way is OutputUnwritable.
    """
    target = Path(os.path.realpath(path))
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputUnwritable(path, _strerror(exc)) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputUnwritable(path, "is a directory")
    if info is not None and not stat.S_ISREG(info.st_mode):
        with _direct(path) as handle:
            yield handle
        return
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise OutputUnwritable(path, _strerror(exc)) from None
    try:
        with _text(fd) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, stat.S_IMODE(info.st_mode) if info else _new_file_mode())
        os.replace(temporary, target)
    except OSError as exc:
        _remove(temporary)
        raise OutputUnwritable(path, _strerror(exc)) from None
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def _direct(path: str) -> Iterator[TextIO]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputUnwritable(path, _strerror(exc)) from None
    try:
        with _text(fd) as handle:
            yield handle
    except OSError as exc:
        raise OutputUnwritable(path, _strerror(exc)) from None


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
