"""``python -m flowd``: the same as the ``flowd`` command."""

import sys

from flowd.cli import main

sys.exit(main())
