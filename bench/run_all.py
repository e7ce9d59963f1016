"""``make bench``: every benchmark in this directory, one after another.

    python bench/run_all.py [--scale]

``--scale`` also runs flowd and ``flowctl ps`` at 10,000 and 100,000 workflows
(``bench_flowd.py --scale 10000 100000``: several minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCALE = ["--scale", "10000", "100000"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", action="store_true", help="also flowd at 100,000 workflows")
    args = parser.parse_args()
    status = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        status |= subprocess.call([sys.executable, str(script)])
    if args.scale:
        print(f"== bench_flowd.py {' '.join(SCALE)}", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / "bench_flowd.py"), *SCALE])
    return status


if __name__ == "__main__":
    sys.exit(main())
