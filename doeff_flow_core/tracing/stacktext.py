"""A call's stack as the record's ``trace`` JSON, from the tracer's ``Call`` chain.

Caches what repeats: each instruction's frame text up to its line's source, each call's
identity and arguments, and the callers' frames of calls made from one place. Caches
are keyed by ``id(code)`` (hashing a code object hashes its contents) and keep the code
object, so an id is never taken for a freed object's.
"""

from __future__ import annotations

import bisect
from types import CodeType
from typing import Any, Final

from doeff_flow_core.encode import frame_head, json_str, source_line_json

MAX_CACHED: Final = 100_000  # code objects and instructions each cache holds at most


class StackText:
    def __init__(self) -> None:
        self._lines: dict[int, tuple[CodeType, list[int], list[int]]] = {}
        self.sites: dict[tuple[int, int], tuple[CodeType, str]] = {}

    def line(self, code: CodeType, offset: int) -> int:
        table = self._lines.get(id(code))
        if table is None or table[0] is not code:
            starts: list[int] = []
            numbers: list[int] = []
            for start, _end, number in code.co_lines():
                starts.append(start)
                numbers.append(number if number is not None else code.co_firstlineno)
            table = (code, starts, numbers)
            if len(self._lines) >= MAX_CACHED:
                self._lines.clear()
            self._lines[id(code)] = table
        index = bisect.bisect_right(table[1], offset) - 1
        return table[2][index] if index >= 0 else code.co_firstlineno

    def site_entry(self, code: CodeType, offset: int) -> tuple[CodeType, str]:
        """A frame's JSON up to and including its ``code`` member, with its code object."""
        key = (id(code), offset)
        hit = self.sites.get(key)
        if hit is not None and hit[0] is code:
            return hit
        line = self.line(code, offset)
        text = (
            f"{frame_head(code.co_qualname, code.co_filename)}{line},"
            f'"code":{source_line_json(code.co_filename, line)}'
        )
        if len(self.sites) >= MAX_CACHED:
            self.sites.clear()
        hit = self.sites[key] = (code, text)
        return hit

    def tail(self, call: Any) -> str:
        """The end of a call's JSON frame: its id and arguments."""
        tail: str | None = call.tail
        if tail is None:
            args = "" if call.args is None else f',"args":{json_str(call.args)}'
            tail = call.tail = f',"call":{call.call_id}{args}}}'
        return tail

    def frame(self, call: Any, offset: int) -> str:
        return self.site_entry(call.code, offset)[1] + self.tail(call)

    def outer(self, call: Any) -> str:
        """The call's callers, outermost first, each followed by a comma.

        Kept on the call itself (and on its caller for the next call made from the same
        place), not on every caller in between: a chain thousands deep with effects only
        at its end costs its own length, not its square."""
        text: str | None = call.outer
        if text is not None:
            return text
        parent = call.parent
        below = parent.below if parent is not None else None
        if below is not None and below[0] == call.parent_offset:
            sibling: str = below[1]  # a sibling called from the same place
            call.outer = sibling
            return sibling
        parts: list[str] = []
        node, offset = parent, call.parent_offset
        while node is not None:
            if node.call_id:  # doeff's own programs (id 0) are not shown
                parts.append(self.frame(node, offset) + ",")
            if node.outer is not None:
                parts.append(node.outer)
                break
            node, offset = node.parent, node.parent_offset
        text = "".join(reversed(parts))
        call.outer = text
        if parent is not None:
            parent.below = (call.parent_offset, text)
        return text

    def stack(self, call: Any, offset: int) -> str:
        if not call.call_id:  # performed by doeff's own program: its callers' stack
            return f"[{self.outer(call)[:-1]}]"
        return f"[{self.outer(call)}{self.frame(call, offset)}]"

    def forget(self, call: Any) -> None:
        """The call's callers changed (one ended before it): rebuild its text."""
        call.outer = None
