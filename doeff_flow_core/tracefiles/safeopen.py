"""Opening trace directories and files without trusting what is there.

Anyone who can write a trace directory can put anything in it: a symbolic link to
another user's file, a FIFO that blocks its reader forever, a device that never ends.
So a workflow directory is opened relative to its trace directory's descriptor and
never through a link, and so is every file in it (``O_NOFOLLOW``); a file must be a
regular file, checked with ``lstat`` before it is opened (a FIFO is never opened for
reading) and with ``fstat`` after (the name may have been swapped between the two);
every open is ``O_NONBLOCK | O_CLOEXEC``. The trace directory itself is the user's own
choice and is followed.
"""

from __future__ import annotations

import errno
import os
import stat as st
from types import TracebackType
from typing import Final

from doeff_flow_core.errors import NotRegularFile, SymlinkRefused

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_KINDS: Final = (
    (st.S_ISDIR, "a directory"),
    (st.S_ISFIFO, "a FIFO"),
    (st.S_ISCHR, "a character device"),
    (st.S_ISBLK, "a block device"),
    (st.S_ISSOCK, "a socket"),
    (st.S_ISLNK, "a symbolic link"),
)


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, in words (``a FIFO``)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if st.S_ISREG(mode) else "an unknown kind of file"


def check_regular(status: os.stat_result, path: object) -> None:
    """SymlinkRefused or NotRegularFile unless ``status`` is a regular file's."""
    if st.S_ISLNK(status.st_mode):
        raise SymlinkRefused(path)
    if not st.S_ISREG(status.st_mode):
        raise NotRegularFile(path, kind_of(status.st_mode))


class Directory:
    """An open directory: files and subdirectories are opened relative to it, so a
    rename of anything above it changes nothing about what is opened."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path  # for messages (a string: cheaper to make than a Path)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, follow: bool = True) -> Directory:
        """``path`` opened as a directory (followed when it is a link and ``follow``)."""
        flags = DIR_FLAGS if follow else DIR_FLAGS | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _refused(exc, os.fspath(path)) from None
        return cls(fd, os.fspath(path))

    def subdirectory(self, name: str) -> Directory:
        """The directory ``name`` in this one, never through a link (SymlinkRefused)."""
        try:
            fd = os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            raise _refused(exc, os.path.join(self.path, name), self) from None
        return Directory(fd, os.path.join(self.path, name))

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def subdirectories(self) -> list[str]:
        """The names of the directories here (links to directories are not ones)."""
        with os.scandir(self.fd) as entries:
            return [item.name for item in entries if item.is_dir(follow_symlinks=False)]

    def open_file(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """A descriptor of the regular file ``name`` here (SymlinkRefused, NotRegularFile,
        or the system's error). Without ``O_CREAT`` the file is looked at before it is
        opened, so nothing but a regular file is ever opened."""
        return self.open_status(name, flags, mode)[0]

    def open_status(
        self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600
    ) -> tuple[int, os.stat_result]:
        """``open_file``, and the open file's status."""
        if not flags & os.O_CREAT:
            try:
                status = self.lstat(name)
            except OSError as exc:
                raise _refused(exc, os.path.join(self.path, name), self) from None
            if not st.S_ISREG(status.st_mode):
                check_regular(status, os.path.join(self.path, name))
        try:
            fd = os.open(name, flags | FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as exc:
            raise _refused(exc, os.path.join(self.path, name), self) from None
        status = os.fstat(fd)
        if not st.S_ISREG(status.st_mode):
            os.close(fd)
            check_regular(status, os.path.join(self.path, name))
        return fd, status

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Directory:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _refused(error: OSError, path: str, parent: Directory | None = None) -> OSError:
    """ELOOP from O_NOFOLLOW (and ENOTDIR from O_DIRECTORY, or ENXIO from a FIFO or
    socket opened for writing) said plainly: which kind of file stood in the way."""
    if error.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EMLINK):
        return type(error)(error.errno, error.strerror, path)  # the whole path, not a name
    try:
        status = parent.lstat(os.path.basename(path)) if parent is not None else os.lstat(path)
    except OSError:
        return error
    if st.S_ISLNK(status.st_mode):
        return SymlinkRefused(path)
    if error.errno == errno.ENOTDIR:
        return NotADirectoryError(
            errno.ENOTDIR, f"not a directory ({kind_of(status.st_mode)})", path
        )
    if not st.S_ISREG(status.st_mode):
        return NotRegularFile(path, kind_of(status.st_mode))
    return error
