"""Record lines built from strings: the tracer's hot path never builds a dict per effect.

The output is exactly what ``LiveTrace.to_json`` would give for the same record
(a test holds the two together); the constant parts of a run's records are encoded
once, and stacks are encoded once per distinct stack.
"""

from __future__ import annotations

import linecache
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring as _json_str
from typing import Any

from doeff_flow_core.clock import IsoClock
from doeff_flow_core.render import clip, render_effect, render_value

MAX_CODE_CHARS = 120
MAX_ERROR_CHARS = 2000
MAX_RESULT_CHARS = 500
MAX_SLOG_CHARS = 300
_STACK_CACHE_LIMIT = 4096
_EFFECT_JSON_LIMIT = 4096

# A buffered effect: claimed as (rendered effect, epoch seconds, task id, the stack as
# JSON, the effect if it is a slog), or the bare effect object when no handler claimed it.
Entry = object
# A frame as the tracer gets it: (function, file, line).
Frame = tuple[str, str, int]


class TaskEvent:
    """A scheduler task event, buffered in order among the effects: written on the next
    record as ``spawned`` (with its parent, None for the root) or, when ``finished_at`` is
    set, as ``finished_tasks`` with that time (the next record may come much later)."""

    __slots__ = ("finished_at", "parent", "task")

    def __init__(
        self, task: int, parent: int | None = None, finished_at: float | None = None
    ) -> None:
        self.task = task
        self.parent = parent
        self.finished_at = finished_at


class CallFailed:
    """A call that ended by raising (seen by the exact tracer as its frame unwound),
    buffered in order among the effects: written on the next record as ``failed_calls``."""

    __slots__ = ("at", "call", "error")

    def __init__(self, call: int, at: float, error: BaseException) -> None:
        self.call = call
        self.at = at
        self.error = error


def json_str(text: str) -> str:
    return str(_json_str(text))


def _opt_str(text: str | None) -> str:
    return "null" if text is None else json_str(text)


def _opt_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def source_line(file: str, line: int) -> str | None:
    text = linecache.getline(file, line).strip()
    return clip(text, MAX_CODE_CHARS) if text else None


def source_line_json(file: str, line: int) -> str:
    """The source line as the frame's ``code`` value: a JSON string, or null."""
    return _opt_str(source_line(file, line))


def frame_head(function: str, file: str) -> str:
    """A frame's JSON up to its line number, which the caller appends."""
    return f'{{"function":{json_str(function)},"file":{json_str(file)},"line":'


def frame_json(function: str, file: str, line: int) -> str:
    return f'{frame_head(function, file)}{int(line)},"code":{source_line_json(file, line)}}}'


def frames_json(frames: Iterable[Frame]) -> str:
    """Frames outermost first as the record's ``trace`` array."""
    return "[" + ",".join(frame_json(f, p, n) for f, p, n in frames) + "]"


class StackCache:
    """Stacks as ``trace`` JSON, looked up by the innermost frame's file and line and
    checked whole: cheaper than hashing the whole stack for every effect."""

    def __init__(self) -> None:
        self.by_site: dict[tuple[object, object], tuple[list[list[Any]], str]] = {}

    def encode(self, frames: list[list[Any]]) -> str:
        """``frames`` as GetTraceback gives them (innermost first) as the record's array."""
        if not frames:
            return "[]"
        inner = frames[0]
        key = (inner[2], inner[1])
        hit = self.by_site.get(key)
        if hit is not None and hit[0] == frames:
            return hit[1]
        if len(self.by_site) >= _STACK_CACHE_LIMIT:
            self.by_site.clear()
        text = frames_json((f[0], f[1], f[2]) for f in reversed(frames))
        self.by_site[key] = (frames, text)
        return text


class RecordEncoder:
    """Encodes one run's records. Not thread-safe: the writer serialises calls."""

    def __init__(
        self,
        workflow_id: str,
        run: str,
        started_at: str,
        pid: int,
        host: str,
        pid_start: int | None,
        slog_type: type | None = None,
        stacks: Any = None,
    ) -> None:
        # tracing.stacktext.StackText for entries from generator events; its caches are read
        # inline.
        self._stacks = stacks
        self._effect_json: dict[str, str] = {}  # effect text -> JSON string, bounded
        self._head = f'{{"workflow_id":{json_str(workflow_id)},"step":'
        self._started = json_str(started_at)
        self._tail = (
            f',"pid":{pid},"host":{json_str(host)},"run":{json_str(run)},'
            f'"trace_exact":%s,"pid_start":{_opt_int(pid_start)}}}\n'
        )
        self._exact_tail = self._tail % "true"
        self._inexact_tail = self._tail % "false"
        self._slog_type = slog_type
        self._clock = IsoClock()
        self._last_stack: dict[int | None, str] = {}
        self._slog = "null"
        self.last_step = 0
        self._last_ts: float | None = None
        self._last_task: int | None = None
        self._spawned: list[str] = []
        self._finished: list[str] = []
        self._failed: list[str] = []

    def _note_task(self, event: TaskEvent) -> None:
        if event.finished_at is not None:
            self._finished.append(f'[{event.task},"{self._clock.format(event.finished_at)}"]')
        else:
            self._spawned.append(f"[{event.task},{_opt_int(event.parent)}]")

    def _note_failed(self, failed: CallFailed) -> None:
        at = self._clock.format(failed.at)
        try:
            error = describe_error(failed.error)
        except Exception:  # an exception whose str() raises
            error = type(failed.error).__name__
        self._failed.append(f'[{failed.call},"{at}",{json_str(error)}]')

    def _task_fields(self) -> str:
        """The pending task events as record fields (emptied), or "" when none."""
        text = ""
        if self._spawned:
            text += f',"spawned":[{",".join(self._spawned)}]'
            self._spawned = []
        if self._finished:
            text += f',"finished_tasks":[{",".join(self._finished)}]'
            self._finished = []
        if self._failed:
            text += f',"failed_calls":[{",".join(self._failed)}]'
            self._failed = []
        return text

    def _note_slog(self, effect: Any) -> None:
        msg = clip(str(getattr(effect, "msg", "")), MAX_SLOG_CHARS)
        kwargs = getattr(effect, "kwargs", None) or {}
        # Text fields as themselves (``source=users``), anything else as its repr.
        fields = ",".join(
            f"{json_str(str(k))}:"
            f"{json_str(clip(v, MAX_SLOG_CHARS) if isinstance(v, str) else render_value(v))}"
            for k, v in kwargs.items()
        )
        self._slog = f'{{"msg":{json_str(msg)},"fields":{{{fields}}}}}'

    def running(self, batch: Sequence[Entry], now: float) -> str:
        """Lines for buffered entries: ``(text, time, task, call, instruction, slog)``
        from generator events, claimed ``(text, time, task, stack JSON, slog)`` tuples from
        the hooks, or bare effects that no handler claimed (written with an inexact stack)."""
        out = []
        slog_type = self._slog_type
        head = self._head
        started = self._started
        last_stack = self._last_stack
        step = self.last_step
        ts = self._last_ts or now
        task = self._last_task
        millisecond = -1
        exact = self._exact_tail
        inexact = self._inexact_tail
        stamp = ""
        stacks = self._stacks
        sites = stacks.sites if stacks is not None else None
        effect_json = self._effect_json
        if len(effect_json) > _EFFECT_JSON_LIMIT:
            effect_json.clear()
        suffix = ""
        suffix_task: int | None = None
        suffix_tail = ""
        for entry in batch:
            if type(entry) is tuple:
                if len(entry) == 6:
                    text, ts, task, call, offset, slog = entry
                    if not call.call_id:
                        stack = stacks.stack(call, offset)
                    # The stack inline: callers (once per call), the yield's frame up to
                    # its source (once per instruction), the call's id and arguments.
                    else:
                        stack = None
                        outer = call.outer
                        if outer is None:
                            outer = stacks.outer(call)
                        site = sites.get((id(call.code), offset))  # type: ignore[union-attr]
                        if site is None or site[0] is not call.code:
                            site = stacks.site_entry(call.code, offset)
                        closing = call.tail
                        if closing is None:
                            closing = stacks.tail(call)
                    tail = exact if call.exact else inexact
                else:
                    text, ts, task, stack, slog = entry
                    last_stack[task] = stack
                    tail = exact
            elif type(entry) is TaskEvent:
                self._note_task(entry)
                continue
            elif type(entry) is CallFailed:
                self._note_failed(entry)
                continue
            else:
                text = render_effect(entry)
                slog = entry if type(entry) is slog_type else None
                stack = last_stack.get(task, "[]")
                tail = inexact
            if slog is not None:
                self._note_slog(slog)
                suffix = ""
            if int(ts * 1000) != millisecond:  # records are stamped to the millisecond
                millisecond = int(ts * 1000)
                stamp = self._clock.format(ts)
                suffix = ""
            step += 1
            if self._spawned or self._finished or self._failed:
                tail = tail[:-2] + self._task_fields() + "}\n"
            # What follows the stack changes only with the millisecond, the slog, the
            # task and exactness: built once for a run of records that share them.
            if task != suffix_task or tail is not suffix_tail or not suffix:
                suffix_task, suffix_tail = task, tail
                suffix = (
                    f',"started_at":{started},"updated_at":"{stamp}",'
                    f'"error":null,"result":null,"last_slog":{self._slog},'
                    f'"task":{"null" if task is None else task}{tail}'
                )
            quoted = effect_json.get(text)
            if quoted is None:
                quoted = effect_json[text] = _json_str(text)
            if stack is None:
                out.append(
                    f'{head}{step},"status":"running","current_effect":{quoted},'
                    f'"trace":[{outer}{site[1]}{closing}]{suffix}'
                )
            else:
                out.append(
                    f'{head}{step},"status":"running","current_effect":{quoted},'
                    f'"trace":{stack}{suffix}'
                )
        self.last_step = step
        self._last_ts = ts
        self._last_task = task
        return "".join(out)

    def terminal(
        self,
        status: str,
        ts: float,
        *,
        result: str | None = None,
        error: str | None = None,
        frames: Sequence[Frame] = (),
    ) -> str:
        self.last_step += 1
        return (
            f'{self._head}{self.last_step},"status":{json_str(status)},"current_effect":null,'
            f'"trace":{frames_json(frames)},"started_at":{self._started},'
            f'"updated_at":"{self._clock.format(ts)}",'
            f'"error":{_opt_str(error)},"result":{_opt_str(result)},'
            f'"last_slog":{self._slog},"task":null{self._exact_tail[:-2]}{self._task_fields()}}}\n'
        )


def describe_error(error: BaseException) -> str:
    return clip(f"{type(error).__name__}: {error}", MAX_ERROR_CHARS)


def describe_result(value: object) -> str:
    return render_value(value, MAX_RESULT_CHARS)
