"""The trace record: one JSON object per line of ``trace.jsonl``.

Seed fields come first and are never renamed; later fields are added after them.
Parsing is strict about types so that readers can trust what they display.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from doeff_flow_core.clock import parse_timestamp
from doeff_flow_core.errors import MalformedRecord

RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
WRITTEN_STATUSES: Final = (RUNNING, COMPLETED, FAILED)
# Derived by readers, never written.
LOST: Final = "lost"
UNKNOWN: Final = "unknown"
ALL_STATUSES: Final = (*WRITTEN_STATUSES, LOST, UNKNOWN)
TERMINAL_STATUSES: Final = (COMPLETED, FAILED)


@dataclass(frozen=True)
class TraceFrame:
    """One ``@do`` call on the stack: where it is suspended."""

    function: str
    file: str
    line: int
    code: str | None = None
    # Written only when the tracer knows them; older traces have neither.
    call: int | None = None  # the invocation, the same in every record while it lives
    args: str | None = None  # its arguments as a bounded repr

    def to_dict(self) -> dict[str, Any]:
        data = {"function": self.function, "file": self.file, "line": self.line, "code": self.code}
        if self.call is not None:
            data["call"] = self.call
        if self.args is not None:
            data["args"] = self.args
        return data


@dataclass(frozen=True)
class SlogLine:
    """The last ``slog(msg, **fields)`` the workflow performed, fields rendered as text."""

    msg: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"msg": self.msg, "fields": dict(self.fields)}

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.msg} {extra}" if extra else self.msg


@dataclass(frozen=True)
class LiveTrace:
    """The state of a workflow at one step."""

    workflow_id: str
    step: int
    status: str
    current_effect: str | None
    trace: tuple[TraceFrame, ...]
    started_at: datetime
    updated_at: datetime
    error: str | None = None
    result: str | None = None
    last_slog: SlogLine | None = None
    task: int | None = None
    pid: int | None = None
    host: str | None = None
    run: str | None = None
    trace_exact: bool = True
    pid_start: int | None = None
    # Scheduler task events since the previous record: tasks spawned, as (task, the
    # spawning task; None for the root), and tasks that finished, as (task, when).
    # Written only when there are any.
    spawned: tuple[tuple[int, int | None], ...] = ()
    finished_tasks: tuple[tuple[int, datetime], ...] = ()
    # Calls that ended by raising since the previous record, innermost first, as (call
    # id, when, the error): written by the exact tracer (3.12+) only, when there are any.
    failed_calls: tuple[tuple[int, datetime, str], ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        data = {
            "workflow_id": self.workflow_id,
            "step": self.step,
            "status": self.status,
            "current_effect": self.current_effect,
            "trace": [frame.to_dict() for frame in self.trace],
            "started_at": self.started_at.isoformat(timespec="milliseconds"),
            "updated_at": self.updated_at.isoformat(timespec="milliseconds"),
            "error": self.error,
            "result": self.result,
            "last_slog": self.last_slog.to_dict() if self.last_slog else None,
            "task": self.task,
            "pid": self.pid,
            "host": self.host,
            "run": self.run,
            "trace_exact": self.trace_exact,
            "pid_start": self.pid_start,
        }
        if self.spawned:
            data["spawned"] = [list(pair) for pair in self.spawned]
        if self.finished_tasks:
            data["finished_tasks"] = [
                [task, at.isoformat(timespec="milliseconds")] for task, at in self.finished_tasks
            ]
        if self.failed_calls:
            data["failed_calls"] = [
                [call, at.isoformat(timespec="milliseconds"), error]
                for call, at, error in self.failed_calls
            ]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object) -> LiveTrace:
        if type(data) is dict:
            record = _plain_record(cls, data)
            if record is not None:
                return record
        if not isinstance(data, dict):
            raise MalformedRecord(f"expected a JSON object, got {type(data).__name__}")
        status = _req(data, "status", str)
        if status not in WRITTEN_STATUSES:
            raise MalformedRecord(f"unknown status {status!r}")
        trace_raw = data.get("trace") or []
        if not isinstance(trace_raw, list):
            raise MalformedRecord("'trace' must be a list")
        return cls(
            workflow_id=_req(data, "workflow_id", str),
            step=_req(data, "step", int),
            status=status,
            current_effect=_opt(data, "current_effect", str),
            trace=tuple(map(_frame, trace_raw)),
            started_at=_time(data, "started_at"),
            updated_at=_time(data, "updated_at"),
            error=_opt(data, "error", str),
            result=_opt(data, "result", str),
            last_slog=_slog(data.get("last_slog")),
            task=_opt(data, "task", int),
            pid=_opt(data, "pid", int),
            host=_opt(data, "host", str),
            run=_opt(data, "run", str),
            trace_exact=bool(_opt(data, "trace_exact", bool, default=True)),
            pid_start=_opt(data, "pid_start", int),
            spawned=_spawned(data.get("spawned")),
            finished_tasks=_tasks(data.get("finished_tasks")),
            failed_calls=_failed_calls(data.get("failed_calls")),
        )


def _plain_record(cls: type[LiveTrace], data: dict[str, Any]) -> LiveTrace | None:
    """``from_dict`` of a record whose every field has exactly the type it must (all a
    writer writes): the same record, with the checks made inline rather than field by
    field. None for any other, which ``from_dict`` then checks field by field; a part
    that fails here (a frame, a time, the slog, task events) fails with the error
    ``from_dict`` gives, as every field it checks first has passed."""
    get = data.get
    workflow_id, step, status = get("workflow_id"), get("step"), get("status")
    effect, error, result = get("current_effect"), get("error"), get("result")
    task, pid, pid_start = get("task"), get("pid"), get("pid_start")
    host, run, exact = get("host"), get("run"), get("trace_exact", True)
    trace, started, updated = get("trace"), get("started_at"), get("updated_at")
    if not (
        type(workflow_id) is str
        and type(step) is int
        and type(status) is str
        and status in WRITTEN_STATUSES
        and (effect is None or type(effect) is str)
        and (trace is None or type(trace) is list)
        and (error is None or type(error) is str)
        and (result is None or type(result) is str)
        and (task is None or type(task) is int)
        and (pid is None or type(pid) is int)
        and (host is None or type(host) is str)
        and (run is None or type(run) is str)
        and (exact is None or type(exact) is bool)
        and (pid_start is None or type(pid_start) is int)
        and type(started) is str
        and type(updated) is str
    ):
        return None
    frames = tuple(map(_frame, trace)) if trace else ()
    # A run's records share their start, and a millisecond's records their update: a
    # datetime is immutable, so one parsed object serves them all.
    times = _TIMES
    started_at = times.get(started)
    updated_at = times.get(updated)
    if started_at is None or updated_at is None:
        try:
            started_at, updated_at = parse_timestamp(started), parse_timestamp(updated)
        except ValueError:
            return None
        if len(times) >= MAX_SHARED_FRAMES:
            times.clear()
        times[started] = started_at
        times[updated] = updated_at
    slog = get("last_slog")
    spawned, finished, failed = get("spawned"), get("finished_tasks"), get("failed_calls")
    values = (
        workflow_id,
        step,
        status,
        effect,
        frames,
        started_at,
        updated_at,
        error,
        result,
        None if slog is None else _shared_slog(slog),
        task,
        pid,
        host,
        run,
        exact is not False,
        pid_start,
        _spawned(spawned) if spawned else (),
        _tasks(finished) if finished else (),
        _failed_calls(failed) if failed else (),
    )
    # What ``cls(*values)`` makes (LiveTrace has no __post_init__), without the frozen
    # dataclass's object.__setattr__ call for each field.
    record = _new(cls)
    record.__dict__.update(zip(_RECORD_FIELDS, values, strict=True))
    return record


_RECORD_FIELDS: Final = tuple(item.name for item in dataclasses.fields(LiveTrace))
_new: Final = object.__new__


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_NOT_PLAIN: Final = frozenset((b"\xef", b"\xfe", b"\xff", b"\x00"))
# Strict JSON: NaN and Infinity are refused (json.loads takes them, other readers do not).
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)
# The scanner ``_DECODER.decode`` calls: (value, end), or StopIteration.
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


def loads(data: str | bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused; otherwise as ``json.loads``."""
    if isinstance(data, bytes | bytearray):
        # UTF-8 unless a BOM or a NUL in the first bytes says otherwise (as json.loads
        # decides); the common case without detect_encoding's work
        if data[:1] in _NOT_PLAIN or data[1:2] == b"\x00":
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        else:
            data = data.decode("utf-8", "surrogatepass")
    elif data.startswith("\ufeff"):
        return json.loads(data)  # refused, as json.loads refuses it
    if data[:1] == "{":
        # A record's line: the decoder's scanner at once, without ``decode``'s look for
        # whitespace around the value; anything else (whitespace, more after the value,
        # no value) is left to ``decode``, whose answer or error it is.
        try:
            value, end = _SCAN(data, 0)
        except StopIteration:
            pass
        else:
            if end == len(data):
                return value
    return _DECODER.decode(data)


def parse_record(line: str | bytes, line_number: int | None = None) -> LiveTrace:
    """One line of a trace file as a record, or MalformedRecord saying why not. The one
    parser every reader uses: strict JSON (no NaN or Infinity), then the record's shape."""
    try:
        data = loads(line)
    except (ValueError, RecursionError) as exc:
        raise MalformedRecord(f"not JSON ({exc.__class__.__name__})", line_number) from None
    try:
        return LiveTrace.from_dict(data)
    except MalformedRecord as exc:
        raise MalformedRecord(exc.reason, line_number) from None


_MISSING: Final = object()


def _check(name: str, value: object, kind: type) -> Any:
    # bool is an int in Python, but never a valid step, line or pid.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedRecord(f"{name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _req(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name, _MISSING)
    if type(value) is kind:  # the common case, without a call
        return value
    if value is _MISSING:
        raise MalformedRecord(f"missing {name!r}")
    return _check(name, value, kind)


def _opt(data: dict[str, Any], name: str, kind: type, default: object = None) -> Any:
    value = data.get(name)
    if value is None:
        return default
    return value if type(value) is kind else _check(name, value, kind)


def _time(data: dict[str, Any], name: str) -> datetime:
    text = _req(data, name, str)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise MalformedRecord(f"{name!r} is not an ISO-8601 time: {text[:40]!r}") from None


# A workflow's records repeat the same few frames: equal frames are parsed into one
# shared (immutable) object, which is cheaper than building each and lets the span
# builder compare stacks by identity. With call ids every invocation has frames of its
# own, so the table fills faster; emptied when full, it stays bounded all the same.
MAX_SHARED_FRAMES: Final = 4096
MAX_SHARED_TEXT: Final = 1024  # characters: a hostile trace's huge frames are not kept
_FrameKey = (
    tuple[str, str, int, str | None] | tuple[str, str, int, str | None, int | None, str | None]
)
_FRAMES: dict[_FrameKey, TraceFrame] = {}


def _frame(item: object) -> TraceFrame:
    if type(item) is dict:  # the common case first: every field of the expected type
        get = item.get
        function, file, line = get("function"), get("file"), get("line")
        code = get("code", _MISSING)
        if len(item) == 4 and code is not _MISSING:
            # these four fields only: no call or args (every frame of an older trace)
            call = args = None
        else:
            call, args = get("call"), get("args")
            if code is _MISSING:
                code = None
        if (
            type(function) is str
            and type(file) is str
            and type(line) is int
            and (code is None or type(code) is str)
            and (call is None or type(call) is int)
            and (args is None or type(args) is str)
        ):
            # Frames without call or args keep the shorter key: no dearer to hash than before.
            key: _FrameKey = (
                (function, file, line, code)
                if call is None and args is None
                else (function, file, line, code, call, args)
            )
            frame = _FRAMES.get(key)
            if frame is None:
                frame = TraceFrame(function, file, line, code, call, args)
                size = len(function) + len(file) + len(code or "") + len(args or "")
                if size <= MAX_SHARED_TEXT:
                    if len(_FRAMES) >= MAX_SHARED_FRAMES:
                        _FRAMES.clear()
                    _FRAMES[key] = frame
            return frame
    if not isinstance(item, dict):
        raise MalformedRecord("a trace frame must be an object")
    return TraceFrame(
        function=_req(item, "function", str),
        file=_req(item, "file", str),
        line=_req(item, "line", int),
        code=_opt(item, "code", str),
        call=_opt(item, "call", int),
        args=_opt(item, "args", str),
    )


_TIMES: dict[str, datetime] = {}
_SLOGS: dict[tuple[object, ...], SlogLine] = {}


def _shared_slog(value: object) -> SlogLine | None:
    """``_slog``, one object for equal slog lines: each record repeats the last slog."""
    if type(value) is dict and len(value) == 2:
        msg, fields = value.get("msg"), value.get("fields")
        if type(msg) is str and type(fields) is dict:
            key = (msg, *fields.items())
            try:
                line = _SLOGS.get(key)
            except TypeError:  # a field that is not text (unhashable): not shared
                return _slog(value)
            if line is None:
                line = _slog(value)
                size = len(msg) + sum(len(str(k)) + len(str(v)) for k, v in fields.items())
                if line is not None and size <= MAX_SHARED_TEXT:  # a hostile one is not kept
                    if len(_SLOGS) >= MAX_SHARED_FRAMES:
                        _SLOGS.clear()
                    _SLOGS[key] = line
            return line
    return _slog(value)


def _slog(value: object) -> SlogLine | None:
    if value is None:
        return None
    if isinstance(value, str):
        return SlogLine(value)
    if not isinstance(value, dict):
        raise MalformedRecord("'last_slog' must be an object")
    fields = value.get("fields") or {}
    if not isinstance(fields, dict):
        raise MalformedRecord("'last_slog.fields' must be an object")
    texts = {str(name): str(text) for name, text in fields.items()}
    return SlogLine(str(_req(value, "msg", str)), texts)


def _spawned(value: object) -> tuple[tuple[int, int | None], ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise MalformedRecord("'spawned' must be a list")
    pairs: list[tuple[int, int | None]] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise MalformedRecord("'spawned' items must be [task, parent] pairs")
        task, parent = item
        pairs.append(
            (
                _check("spawned task", task, int),
                None if parent is None else _check("spawned parent", parent, int),
            )
        )
    return tuple(pairs)


def _tasks(value: object) -> tuple[tuple[int, datetime], ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise MalformedRecord("'finished_tasks' must be a list")
    finished: list[tuple[int, datetime]] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise MalformedRecord("'finished_tasks' items must be [task, time] pairs")
        finished.append((_check("finished task", item[0], int), _time({"at": item[1]}, "at")))
    return tuple(finished)


def _failed_calls(value: object) -> tuple[tuple[int, datetime, str], ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise MalformedRecord("'failed_calls' must be a list")
    failed: list[tuple[int, datetime, str]] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 3):
            raise MalformedRecord("'failed_calls' items must be [call, time, error] triples")
        failed.append(
            (
                _check("failed call", item[0], int),
                _time({"at": item[1]}, "at"),
                _check("failed call's error", item[2], str),
            )
        )
    return tuple(failed)
