"""The ``flowd`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("flowd: the daemon is not available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
