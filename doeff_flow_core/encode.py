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

# A pending effect: (step, epoch seconds, effect, task id or None).
Pending = tuple[int, float, object, "int | None"]
# A frame as the tracer gets it: (function, file, line).
Frame = tuple[str, str, int]


def json_str(text: str) -> str:
    return str(_json_str(text))


def _opt_str(text: str | None) -> str:
    return "null" if text is None else json_str(text)


def _opt_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def source_line(file: str, line: int) -> str | None:
    text = linecache.getline(file, line).strip()
    return clip(text, MAX_CODE_CHARS) if text else None


def frame_json(function: str, file: str, line: int) -> str:
    code = source_line(file, line)
    return (
        f'{{"function":{json_str(function)},"file":{json_str(file)},'
        f'"line":{int(line)},"code":{_opt_str(code)}}}'
    )


def frames_json(frames: Iterable[Frame]) -> str:
    """Frames outermost first as the record's ``trace`` array."""
    return "[" + ",".join(frame_json(f, p, n) for f, p, n in frames) + "]"


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
    ) -> None:
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
        self._stacks: dict[tuple[Any, ...], str] = {}
        self._last_stack: dict[int | None, str] = {}
        self._slog = "null"
        self.last_step = 0

    def _stack(self, key: tuple[Any, ...]) -> str:
        """``key`` is GetTraceback's frames flattened, innermost first."""
        cached = self._stacks.get(key)
        if cached is None:
            if len(self._stacks) >= _STACK_CACHE_LIMIT:
                self._stacks.clear()
            frames = [(key[i], key[i + 1], key[i + 2]) for i in range(len(key) - 3, -1, -3)]
            cached = self._stacks[key] = frames_json(frames)
        return cached

    def _note_slog(self, effect: Any) -> None:
        msg = clip(str(getattr(effect, "msg", "")), MAX_SLOG_CHARS)
        kwargs = getattr(effect, "kwargs", None) or {}
        fields = ",".join(
            f"{json_str(str(k))}:{json_str(render_value(v))}" for k, v in kwargs.items()
        )
        self._slog = f'{{"msg":{json_str(msg)},"fields":{{{fields}}}}}'

    def running(self, batch: Sequence[tuple[Pending, tuple[Any, ...] | None]]) -> str:
        """Lines for ``(pending, stack key or None)`` pairs; None means no exact stack."""
        out = []
        fmt = self._clock.format
        slog_type = self._slog_type
        for (step, ts, effect, task), key in batch:
            if type(effect) is slog_type:
                self._note_slog(effect)
            if key is not None:
                stack = self._last_stack[task] = self._stack(key)
                tail = self._exact_tail
            else:
                stack = self._last_stack.get(task, "[]")
                tail = self._inexact_tail
            out.append(
                f'{self._head}{step},"status":"running","current_effect":'
                f"{json_str(render_effect(effect))},"
                f'"trace":{stack},"started_at":{self._started},"updated_at":"{fmt(ts)}",'
                f'"error":null,"result":null,"last_slog":{self._slog},'
                f'"task":{_opt_int(task)}{tail}'
            )
            self.last_step = step
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
            f'"last_slog":{self._slog},"task":null{self._exact_tail}'
        )


def describe_error(error: BaseException) -> str:
    return clip(f"{type(error).__name__}: {error}", MAX_ERROR_CHARS)


def describe_result(value: object) -> str:
    return render_value(value, MAX_RESULT_CHARS)
