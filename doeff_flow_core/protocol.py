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

# Methods a client may call (newline-delimited JSON-RPC 2.0), and the notification
# flowd pushes to a watcher.
PING: Final = "ping"
PS: Final = "ps"
GET: Final = "get"
HISTORY: Final = "history"
WATCH: Final = "watch"
UNWATCH: Final = "unwatch"
ROOTS_LIST: Final = "roots.list"
ROOTS_ADD: Final = "roots.add"
STATS: Final = "stats"
TRACE_NOTIFICATION: Final = "trace"

# JSON-RPC 2.0's codes, then flowd's own (documented in the README).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
UNKNOWN_WORKFLOW: Final = -32001
UNKNOWN_SUBSCRIPTION: Final = -32002
NOT_A_DIRECTORY: Final = -32003
TRACE_UNREADABLE: Final = -32004

# Limits.
MAX_REQUEST_BYTES: Final = 1024 * 1024  # a request line, newline excluded
HISTORY_DEFAULT: Final = 10  # ``history``'s ``last`` when not given
HISTORY_MAX: Final = 10000  # ``history``'s ``last`` at most

# A workflow summary (``ps``'s items, ``get``'s result): these members, in this order.
# ``record`` is the latest record as stored (or null); ``status`` its effective status
# (``lost`` derived); ``problem`` why there is no record (the words above, or the
# system's).
SUMMARY_FIELDS: Final = ("workflow_id", "root", "status", "record", "problem")
