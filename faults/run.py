"""The fault suite: ``python faults/run.py [--quick]``.

Prints one line of figures per class of fault and exits 1 when anything was lost, crashed
or went unanswered (the problems found are listed on stderr)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import corrupt
import crafted
import failover
import files
import flood
import hostile
import kills
import restarts
import sigterm
import spoof
import startup

# Sizes of each class: full, then quick (--quick, part of make test).
KILLS = (200, 20)
CORRUPT_FILES = (1000, 100)
HOSTILE_MESSAGES = (10000, 1000)
FLOWD_KILLS = (5, 2)
WATCHERS = (20, 8)


class Figures(Protocol):
    problems: list[str]

    def line(self) -> str: ...

    def ok(self) -> bool: ...


# Each class: how to run it, given size (0 full, 1 quick) and seed. One row per class.
RUNNERS: dict[str, Callable[[int, int], Figures]] = {
    "kills": lambda size, seed: kills.run(KILLS[size], seed),
    "corrupt": lambda size, seed: corrupt.run(CORRUPT_FILES[size], seed),
    "hostile": lambda size, seed: hostile.run(HOSTILE_MESSAGES[size], seed),
    "restarts": lambda size, seed: restarts.run(FLOWD_KILLS[size], WATCHERS[size], seed),
    "files": lambda size, seed: files.run(quick=size == 1, seed=seed),
    "startup": lambda size, seed: startup.run((20, 4)[size], seed),
    "sigterm": lambda size, seed: sigterm.run((40, 8)[size], seed),
    "crafted": lambda size, seed: crafted.run((2000, 200)[size], seed, quick=size == 1),
    "spoof": lambda size, seed: spoof.run(quick=size == 1, seed=seed),
    "flood": lambda size, seed: flood.run(*((300_000, 100), (20_000, 12))[size], seed),
    "failover": lambda size, seed: failover.run(*((10, 6), (3, 3))[size], seed),
}
CLASSES = tuple(RUNNERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the shortened form (make test)")
    parser.add_argument("--only", choices=CLASSES, action="append", help="run only these")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = 1 if args.quick else 0
    failed = False
    started = time.monotonic()
    for name in args.only or CLASSES:
        begun = time.monotonic()
        figures = RUNNERS[name](size, args.seed)
        print(f"{figures.line()}  [{time.monotonic() - begun:.1f} s]", flush=True)
        if not figures.ok():
            failed = True
        for problem in figures.problems[:20]:
            print(f"  {name}: {problem}", file=sys.stderr)
    shutil.rmtree(common.PRIVATE, ignore_errors=True)
    print(f"faults: {'FAILED' if failed else 'ok'} in {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
