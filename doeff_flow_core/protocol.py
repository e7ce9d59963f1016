"""What flowd and flowctl share: method names, error codes, limits, problem words and
the shape of a workflow summary. Both import it from here; neither copies a value.

Standard library only, like the rest of the core.
"""

from __future__ import annotations

from typing import Final

# Why a workflow has no latest record (a summary's ``problem``), besides the system's
# own words for a file that cannot be read.
NO_TRACE: Final = "no trace.jsonl"
EMPTY_TRACE: Final = "empty trace"
NO_VALID_RECORDS: Final = "no valid records"
