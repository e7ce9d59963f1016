"""The shadow stack of one traced run: a ``Call`` per invocation of a ``@do`` body, and
the ``Context`` that says which calls live and where the next new body belongs.

Only data and its upkeep; the events that drive it are ``monitor``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType, FrameType
from typing import Final

# Calls tracked per traced run. A body that raises leaves its entry behind until its
# frame's address is reused; past this, calls that have not yielded lately are forgotten
# (one that yields again is followed on, its callers unknown).
MAX_LIVE_CALLS: Final = 100_000


class Call:
    """One invocation of a ``@do`` body: who called it, from where, with what."""

    __slots__ = (
        "args",
        "below",
        "call_id",
        "code",
        "done",
        "exact",
        "offset",
        "outer",
        "parent",
        "parent_offset",
        "tail",
        "task",
    )

    def __init__(
        self,
        call_id: int,  # 0: one of doeff's own programs, followed but not shown
        code: CodeType,
        parent: Call | None,
        task: int | None,
        args: str | None,
        exact: bool = True,
    ) -> None:
        self.call_id = call_id
        self.code = code
        self.parent = parent
        # Where the caller was suspended when this call started: fixed for its life.
        self.parent_offset = parent.offset if parent is not None else -1
        self.task = task
        self.args = args
        # False: met mid-way, its callers unknown (forgotten when the table was full).
        self.exact = exact
        self.done = False  # returned (a handler body may outlive the call it answered)
        self.offset: int = -1  # the instruction of this call's latest yield
        # Built when first needed: the callers as JSON frames; this call's identity and
        # arguments closing its JSON frame; the frames of a call it made (where, text).
        self.outer: str | None = None
        self.tail: str | None = None
        self.below: tuple[int, str] | None = None


class Context:
    """One traced run: its live calls, where the next new body belongs, and the buffer
    its effects go to as ``(text, time, task, call, instruction, slog)``."""

    def __init__(
        self,
        buffer: list[object],
        on_full: Callable[[], None],
        slog_type: type | None,
        capture_args: bool,
    ) -> None:
        self.buffer = buffer
        self.on_full = on_full  # called when the buffer holds over MAX_BUFFERED entries
        self.slog_type = slog_type
        self.capture_args = capture_args
        self.calls: dict[int, Call] = {}  # id(frame) -> Call
        self.last: Call | None = None
        # What ``last`` yielded that may start a body: a Call node (it says the new
        # call's arguments), an effect carrying a program, or _TASK_ROOT.
        self.pending: object = None
        self.task: int | None = None
        self.new_tasks: set[int | None] = set()  # spawned, not yet entered
        self.entry: FrameType | None = None  # the frame that runs this run's VM
        self.next_id = 1

    def enter_task(self, task: int | None) -> None:
        if task != self.task:
            self.task = task
            self.last = None
            if task in self.new_tasks:
                self.new_tasks.discard(task)
                self.pending = _TASK_ROOT  # its program is followed, even doeff's own
            else:
                self.pending = None

    def forget_idle(self) -> None:
        """Bound the table of calls: keep those that yielded since the last time, and
        their callers; if that is still too many, the callers and the newest others."""
        calls = self.calls
        wanted: set[int] = set()
        for call in calls.values():
            node: Call | None = call if call.offset != -1 else None
            while node is not None and id(node) not in wanted:
                wanted.add(id(node))
                node = node.parent
        keep = {key: call for key, call in calls.items() if id(call) in wanted}
        room = MAX_LIVE_CALLS * 9 // 10
        if len(keep) > room:
            # The chain that is running now first, then the newest.
            running: set[int] = set()
            node = self.last
            while node is not None:
                running.add(id(node))
                node = node.parent
            first = [(k, c) for k, c in keep.items() if id(c) in running]
            rest = [(k, c) for k, c in keep.items() if id(c) not in running]
            keep = dict(first + rest[len(rest) - max(room - len(first), 0) :])
        for call in keep.values():
            call.offset = -1  # "yielded since" starts again
        self.calls = keep


_TASK_ROOT: Final = object()
