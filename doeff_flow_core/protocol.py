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
ROOTS_REMOVE: Final = "roots.remove"
STATS: Final = "stats"
TRACE_NOTIFICATION: Final = "trace"

# JSON-RPC 2.0's codes, then flowd's own (documented in docs/protocol.md).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
UNKNOWN_WORKFLOW: Final = -32001
UNKNOWN_SUBSCRIPTION: Final = -32002
NOT_A_DIRECTORY: Final = -32003
TRACE_UNREADABLE: Final = -32004
TOO_MANY_WATCHES: Final = -32005  # ``watch`` past MAX_WATCHES or MAX_WATCHES_TOTAL
ROOT_REFUSED: Final = -32006  # ``roots.add``: a system directory, or another user's
UNKNOWN_ROOT: Final = -32007  # ``roots.remove``: not a root, registered or added

# Limits.
MAX_REQUEST_BYTES: Final = 1024 * 1024  # a request line, newline excluded
HISTORY_DEFAULT: Final = 10  # ``history``'s ``last`` when not given
HISTORY_MAX: Final = 10000  # ``history``'s ``last`` at most
# Subscriptions one connection may hold at once (a dashboard needs one; ``watch`` with
# no workflow_id covers every workflow), and all connections together. Each costs flowd
# memory (about 300 bytes, more for one that is behind) until ``unwatch`` or the
# connection closes, so no client, nor many at once, can grow flowd without bound; past
# either, ``watch`` is TOO_MANY_WATCHES, answered before anything is made for it.
MAX_WATCHES: Final = 1000
MAX_WATCHES_TOTAL: Final = 10000

# A workflow summary (``ps``'s items, ``get``'s result): these members, in this order.
# ``record`` is the latest record as stored (or null); ``status`` its effective status
# (``lost`` derived); ``problem`` why there is no record (the words above, or the
# system's).
SUMMARY_FIELDS: Final = ("workflow_id", "root", "status", "record", "problem")
