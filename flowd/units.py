"""flowd's systemd units: their text, and ``flowd install-units``, which writes them.

flowd is a per-user daemon (it indexes the user's own traces and answers only its own
user), so its units are *user* units, run by each user's service manager:

- ``--user`` (the default) writes them into ``$XDG_CONFIG_HOME/systemd/user/`` (else
  ``~/.config/systemd/user/``), for this user;
- ``--system`` writes them into ``/etc/systemd/user/``, for every user's manager, not into
  ``/etc/systemd/system/``: a system unit would run one flowd, as one user, for everyone.

The text of both units comes from ``unit_texts``, pure, from the templates below (the
shipped files in ``systemd/`` are ``unit_texts(SHIPPED_EXEC_START)``). ``ExecStart``
names the flowd that runs ``install-units`` by its absolute path: systemd finds a bare
``flowd`` only in /usr/local/bin, /usr/bin and the like, never in a virtual environment
or ``~/.local/bin`` (pip --user, pipx).

Writing is careful: a unit that is already there with other text is not replaced
without ``force``; a unit is never written through a symbolic link; each file is written
whole under another name, then renamed into place.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import doeff_flow_core
from flowd.errors import UnitExists, UnitPathUnusable, UnitProgramUnsafe, UnitUnwritable

SOCKET_UNIT: Final = "flowd.socket"
SERVICE_UNIT: Final = "flowd.service"
SYSTEM_DIR: Final = Path("/etc/systemd/user")  # user units for every user
# What the shipped service runs: where pip --user and pipx put flowd (%h: the home)
SHIPPED_EXEC_START: Final = "%h/.local/bin/flowd"
EXEC_START: Final = "{exec_start}"

_NOTE: Final = (
    "# ExecStart must name flowd by its absolute path (%h is the home directory; pip --user",
    "# and pipx put flowd in ~/.local/bin). For flowd in a virtual environment, or anywhere",
    "# else, `flowd install-units` writes these units with the path of the flowd it runs.",
)


@dataclass(frozen=True)
class UnitTemplate:
    """One unit file: its leading comment lines, then its sections in order, each a name
    and its ``key=value`` entries (a value may hold ``{exec_start}``)."""

    name: str
    comment: tuple[str, ...]
    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


TEMPLATES: Final = (
    UnitTemplate(
        SOCKET_UNIT,
        (
            "# doeff-flow daemon socket (user unit): systemctl --user enable --now flowd.socket",
            "# `flowd install-units` writes it, and flowd.service, for the flowd it runs.",
        ),
        (
            ("Unit", (("Description", "doeff-flow daemon socket"),)),
            (
                "Socket",
                (
                    ("ListenStream", "%t/doeff-flow/flowd.sock"),  # flowd's default path
                    ("SocketMode", "0600"),
                    ("DirectoryMode", "0700"),  # flowd refuses a socket directory others open
                ),
            ),
            ("Install", (("WantedBy", "sockets.target"),)),
        ),
    ),
    UnitTemplate(
        SERVICE_UNIT,
        (
            "# doeff-flow daemon (user unit), started by flowd.socket on the first connection.",
            *_NOTE,
        ),
        (
            (
                "Unit",
                (
                    ("Description", "doeff-flow daemon: indexes workflow traces, answers flowctl"),
                    ("Requires", SOCKET_UNIT),
                    ("After", SOCKET_UNIT),
                ),
            ),
            (
                "Service",
                (
                    ("Type", "notify"),
                    ("ExecStart", EXEC_START),
                    ("WatchdogSec", "30"),
                    ("Restart", "on-failure"),
                ),
            ),
            ("Install", (("Also", SOCKET_UNIT),)),
        ),
    ),
)


def unit_texts(exec_start: str) -> dict[str, str]:
    """Each unit's file name and text, the service running ``exec_start`` (a command line
    in systemd's syntax: see ``exec_line``)."""
    texts = {}
    for unit in TEMPLATES:
        lines = list(unit.comment)
        for number, (section, entries) in enumerate(unit.sections):
            lines += [""] if number else []
            lines.append(f"[{section}]")
            lines += [f"{key}={value.replace(EXEC_START, exec_start)}" for key, value in entries]
        texts[unit.name] = "\n".join(lines) + "\n"
    return texts


_PLAIN_WORD: Final = re.compile(r"[A-Za-z0-9_./+:@=,-]+")


def exec_line(command: Sequence[str]) -> str:
    """``command`` as an ``ExecStart`` value: each word quoted when it needs it, ``%``
    (and ``$`` in arguments) doubled so that systemd takes them literally."""
    return " ".join(_word(word, number == 0) for number, word in enumerate(command))


def _word(word: str, program: bool) -> str:
    try:
        word.encode("utf-8")  # a unit file is UTF-8: a path that is not cannot be named
    except UnicodeEncodeError:
        raise UnitPathUnusable(word, "is not valid UTF-8") from None
    if any(char < " " or char == "\x7f" for char in word):
        raise UnitPathUnusable(word, "holds a control character")
    if program and any(char in word for char in "\"'\\"):
        raise UnitPathUnusable(word, "holds a quote or backslash, which systemd refuses there")
    if _PLAIN_WORD.fullmatch(word):
        return word
    escaped = word.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    if not program:  # systemd expands $NAME in arguments, not in the program's path
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def running_program(argv0: str, executable: str) -> tuple[str, ...]:
    """The command that runs the flowd running now, by absolute paths.

    The console script when flowd was started by it (``argv0``), as it was named: its
    symbolic links are kept, so that pipx's ``~/.local/bin/flowd`` goes on naming the
    environment pipx keeps it pointing at. Otherwise (``python -m flowd``) the interpreter
    (``executable``, not resolved either: a virtual environment's python is a link), with
    ``-P`` so that a ``flowd`` directory in the service's working directory (the home)
    is never imported instead.
    """
    script = os.path.abspath(argv0)
    if os.path.basename(script) == "flowd" and _runnable(script):
        return (script,)
    return (os.path.abspath(executable), "-P", "-m", "flowd")


def _runnable(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.X_OK)
    except OSError:
        return False


def user_dir(environ: Mapping[str, str], home: Path) -> Path:
    """Where this user's own units go: ``$XDG_CONFIG_HOME/systemd/user`` (an absolute
    ``$XDG_CONFIG_HOME`` only, as the XDG spec says), else ``~/.config/systemd/user``."""
    config = environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else home / ".config"
    return base / "systemd" / "user"


def enable_commands(system: bool) -> list[str]:
    """What to run once the units are written, to start flowd's socket."""
    if system:
        return [
            "systemctl --global enable flowd.socket",
            "# then, as each user (or at their next login):",
            "systemctl --user daemon-reload && systemctl --user start flowd.socket",
        ]
    return ["systemctl --user daemon-reload && systemctl --user enable --now flowd.socket"]


def program_files(command: Sequence[str]) -> list[Path]:
    """The files ``command`` runs: its program as named and as its links resolve, and,
    for a script, the interpreter its ``#!`` line names."""
    named = Path(os.path.abspath(command[0]))  # what systemd runs: links and all
    program = Path(os.path.realpath(named))
    files = [named, program]
    try:
        with open(program, "rb") as script:
            first = script.readline(4096)
    except OSError:
        return files
    if first.startswith(b"#!"):
        words = first[2:].split()
        if words:
            files.append(Path(os.path.realpath(os.fsdecode(words[0]))))
    return files


def unshared_problem(paths: Sequence[Path]) -> str | None:
    """Why running these files for every user would let one user run code as another:
    a file, or a directory above it, that a user other than root owns or that a group or
    everyone may write. None when there is no such reason."""
    for path in paths:
        for place in (path, *path.parents):
            try:
                info = os.stat(place)
            except OSError as exc:
                return f"{place}: {exc.strerror or exc}"
            if info.st_uid != 0:
                return f"{place} belongs to uid {info.st_uid}, not root"
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (
                stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX and place != path
            ):
                return f"{place} may be written by others than root"
    return None


def packages() -> list[Path]:
    """The directories of the packages flowd runs: flowd's and doeff_flow_core's."""
    return [Path(__file__).resolve().parent, Path(doeff_flow_core.__file__).resolve().parent]


def check_shared(command: Sequence[str], packages: Sequence[Path]) -> None:
    """Raise ``UnitProgramUnsafe`` unless ``command`` (and the ``packages`` it imports)
    may be run for every user: only root may change any of them."""
    problem = unshared_problem([*program_files(command), *packages])
    if problem is not None:
        raise UnitProgramUnsafe(command[0], problem)


# -- writing ------------------------------------------------------------------------------

WRITTEN: Final = "written"
REPLACED: Final = "replaced"
UNCHANGED: Final = "unchanged"


def install(directory: Path, texts: Mapping[str, str], force: bool) -> dict[str, str]:
    """Write each unit into ``directory`` (made if missing); what became of each:
    WRITTEN, REPLACED (only with ``force``) or UNCHANGED. Raises ``UnitExists`` before
    writing anything when a unit there has other text and ``force`` is false."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UnitUnwritable(str(directory), exc) from None
    try:
        present = {name: _read(fd, directory / name) for name in texts}
        if not force:
            for name, text in present.items():
                if text is not None and text != texts[name]:
                    raise UnitExists(str(directory / name))
        outcome = {}
        for name, text in texts.items():
            if present[name] == text:
                outcome[name] = UNCHANGED
                continue
            _write(fd, directory / name, text)
            outcome[name] = WRITTEN if present[name] is None else REPLACED
        os.fsync(fd)
        return outcome
    finally:
        os.close(fd)


_UNIT_BYTES: Final = 1 << 20  # more than any unit: a bigger file is not ours


def _read(directory: int, path: Path) -> str | None:
    """The unit's text, None when there is none; a link or other odd file is 'other
    text' (``\\0`` never is a unit's)."""
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        return f"\0{exc.errno}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "\0not a regular file"
        data = os.read(fd, _UNIT_BYTES)
    finally:
        os.close(fd)
    return data.decode("utf-8", "surrogateescape")


def _write(directory: int, path: Path, text: str) -> None:
    temporary = f".{path.name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o644, dir_fd=directory)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the manager only needs to read it
            data = memoryview(text.encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename replaces a link itself, never what it points to
        os.rename(temporary, path.name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as exc:
        try:
            os.unlink(temporary, dir_fd=directory)
        except OSError:
            pass
        raise UnitUnwritable(str(path), exc) from None
