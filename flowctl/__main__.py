"""``python -m flowctl``: the same as the ``flowctl`` console script."""

import sys

from flowctl.cli import main

sys.exit(main())
