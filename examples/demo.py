"""``make demo``: run an example workflow and look at it live with flowctl.

Starts ``examples/pipeline.py`` in the background, follows it with
``flowctl watch --exit-on-complete`` while it runs, then shows ``flowctl ps`` and
``flowctl history``, and draws its timeline with ``flowctl export``. Traces (and the
timeline, ``etl-demo.svg``) go to ``.doeff-flow/`` in the current directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKFLOW_ID = "etl-demo"


def flowctl(*args: str) -> int:
    command = ["flowctl", *args]
    print(f"\n$ {' '.join(command)}", flush=True)
    return subprocess.call([sys.executable, "-m", "flowctl", *args])


def main() -> int:
    print(f"$ python examples/pipeline.py --workflow-id {WORKFLOW_ID} &", flush=True)
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "pipeline.py"), "--workflow-id", WORKFLOW_ID],
        stdout=subprocess.DEVNULL,
    )
    try:
        flowctl("watch", WORKFLOW_ID, "--exit-on-complete")
    finally:
        worker.wait()
    flowctl("ps")
    flowctl("history", WORKFLOW_ID, "--last", "8")
    timeline = Path(".doeff-flow") / f"{WORKFLOW_ID}.svg"
    if flowctl("export", WORKFLOW_ID, "-o", str(timeline)) == 0:
        print(f"(the timeline: open {timeline} in a browser)")
    return worker.returncode


if __name__ == "__main__":
    sys.exit(main())
