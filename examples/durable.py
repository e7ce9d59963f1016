"""A durable re-run: finished steps are answered from SQLite storage.

    python examples/durable.py            # run; kill it with Ctrl-C half way if you like
    python examples/durable.py --crash 3  # dies (os._exit) after step 3 is stored
    python examples/durable.py            # re-run: steps 1-3 come from storage

The second trace shows ``MemoGet`` records for the steps that came from storage, and
no ``slog`` from inside them: their bodies did not run again.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from doeff import do, slog
from doeff_core_effects.cache import cache
from doeff_core_effects.storage import SQLiteStorage

from doeff_flow_core import run_workflow

CRASH_AFTER = 0


@cache()
@do
def fetch_page(n: int) -> Any:
    yield slog("fetching page", page=n)
    time.sleep(0.2)  # the expensive part a re-run should not repeat
    return f"page-{n}"


@do
def crawl(pages: int) -> Any:
    results = []
    for n in range(1, pages + 1):
        results.append((yield fetch_page(n)))
        yield slog("stored", page=n)
        if n == CRASH_AFTER:
            os._exit(17)  # a crash: no terminal record, the trace reads as lost
    return results


def main() -> None:
    global CRASH_AFTER
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash", type=int, default=0, help="die after this many pages")
    parser.add_argument("--db", default=".doeff-flow/durable.sqlite3")
    parser.add_argument("--trace-dir", default=None)
    args = parser.parse_args()
    CRASH_AFTER = args.crash
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    result = run_workflow(crawl(6), "durable-crawl", args.trace_dir, storage=SQLiteStorage(args.db))
    print(result.unwrap())


if __name__ == "__main__":
    main()
