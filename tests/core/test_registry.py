"""The lists in the state directory (``doeff_flow_core.registry``): opened safely (no
link followed, the user's own files), changed under a lock so that no writer's entry is
lost while another process rewrites the list, and forgetting directories that are gone."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from doeff_flow_core.registry import (
    ADDED_ROOTS,
    REGISTRY,
    StateUnsafe,
    forget_missing,
    register_trace_dir,
    registered_trace_dirs,
    registry_path,
    unregister_trace_dir,
)

WRITER = """
import sys
from pathlib import Path
from doeff_flow_core.registry import register_trace_dir
base, count = Path(sys.argv[1]), int(sys.argv[2])
for n in range(count):
    directory = base / f"d{n}"
    directory.mkdir()
    assert register_trace_dir(directory)
"""


def test_no_entry_is_lost_while_the_registry_is_rewritten(
    tmp_path: Path, start_python: Callable[..., subprocess.Popen[str]]
) -> None:
    gone = [tmp_path / f"gone-{n}" for n in range(300)]
    registry_path().parent.mkdir(parents=True)
    registry_path().write_text("".join(f"{path}\n" for path in gone))
    writers = []
    for w in range(4):
        (tmp_path / f"w{w}").mkdir()
        writers.append(start_python(WRITER, tmp_path / f"w{w}", 60))
    forgotten: list[str] = []
    while any(writer.poll() is None for writer in writers):
        forgotten += forget_missing()  # rewrites the list while the writers append to it
    for writer in writers:
        assert writer.wait() == 0, writer.communicate()
    forgotten += forget_missing()
    assert sorted(forgotten) == sorted(map(str, gone))
    expected = {tmp_path / f"w{w}" / f"d{n}" for w in range(4) for n in range(60)}
    assert set(registered_trace_dirs()) == expected
    assert len(registered_trace_dirs()) == 240
    mode = stat.S_IMODE(registry_path().stat().st_mode)
    assert mode == 0o600
    assert sorted(os.listdir(registry_path().parent)) == ["trace-dirs", "trace-dirs.lock"]


def test_forgetting_keeps_what_exists_and_what_cannot_be_looked_at(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    register_trace_dir(kept)
    REGISTRY.add(str(tmp_path / "gone"))
    REGISTRY.add(str(a_file))
    assert forget_missing() == [str(tmp_path / "gone"), str(a_file)]
    assert registered_trace_dirs() == [kept]
    assert forget_missing() == []
    assert unregister_trace_dir(str(kept)) is True
    assert unregister_trace_dir(str(kept)) is False
    assert registered_trace_dirs() == []


def test_a_linked_state_directory_is_not_used(tmp_path: Path, state_home: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trace-dirs").write_text(f"{tmp_path}\n")
    state_home.mkdir(parents=True, exist_ok=True)
    (state_home / "doeff-flow").symlink_to(elsewhere)
    assert registered_trace_dirs() == []
    assert register_trace_dir(tmp_path / "traces") is False
    assert ADDED_ROOTS.read() == []
    try:
        ADDED_ROOTS.add(str(tmp_path))
    except StateUnsafe as exc:
        assert "symbolic link" in str(exc)
    else:
        raise AssertionError("added through a link")
    assert sorted(os.listdir(elsewhere)) == ["trace-dirs"]  # nothing written there
    assert (elsewhere / "trace-dirs").read_text() == f"{tmp_path}\n"


def test_a_linked_or_foreign_list_is_not_used(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text(f"{tmp_path}\n")
    registry_path().parent.mkdir(parents=True)
    registry_path().symlink_to(target)
    assert registered_trace_dirs() == []
    assert register_trace_dir(tmp_path) is False
    assert target.read_text() == f"{tmp_path}\n"  # not appended to through the link
    registry_path().unlink()
    if os.geteuid() == 0:
        registry_path().write_text(f"{tmp_path}\n")
        os.chown(registry_path(), 65534, 65534)
        assert registered_trace_dirs() == []  # another user's list is not believed
        assert register_trace_dir(tmp_path) is False
