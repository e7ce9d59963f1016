"""The record model: tracer lines parse and round-trip to the same JSON; rendering effects."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from doeff import EffectBase, Get, Put, do, slog
from hypothesis import given, settings
from hypothesis import strategies as st

from doeff_flow_core import LiveTrace, SlogLine, TraceFrame, parse_record, run_workflow
from doeff_flow_core import records as record_model
from doeff_flow_core.clock import IsoClock, parse_timestamp
from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.render import MAX_EFFECT_CHARS, render_effect
from tests.core.test_recording import carry_handler, carrying, fail_top, fan_out, self_handled
from tests.support.procs import private_state


@do
def awkward_text() -> Any:
    yield slog('quote " backslash \\ newline \n tab \t nel \x85 ls \u2028', city="Zürich", e="🌊")
    value = yield Get("ключ")
    yield Put("ключ", f"{value}-é\u2028")
    return {"ü": value, "nested": [1, (2, "三")]}


WORKFLOWS = [
    ("awkward", awkward_text, {"ключ": "значение"}, ()),
    ("spawn", fan_out, {"k2": 1, "k3": 2}, ()),
    ("inner", self_handled, {"x": 1}, ()),
    ("carry", carrying, {}, (carry_handler,)),
    ("failed", fail_top, {"x": 1}, ()),
]


@pytest.fixture(scope="module")
def tracer_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every line the tracer wrote for a handful of real workflows (in a state home of
    their own: this runs before the autouse ``state_home`` of any test)."""
    trace_dir = tmp_path_factory.mktemp("round-trip")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        private_state(monkeypatch, tmp_path_factory.mktemp("round-trip-state"))
        for name, workflow, store, handlers in WORKFLOWS:
            result = run_workflow(workflow(), name, trace_dir, store=store, handlers=handlers)
            text = result.trace_path.read_text(encoding="utf-8")
            assert text.endswith("\n")
            lines += [line + "\n" for line in text.split("\n")[:-1]]
    assert len(lines) > 20
    return lines


def without_times(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("started_at", "updated_at")}


def test_tracer_lines_parse_and_round_trip_all_but_timestamps(tracer_lines: list[str]) -> None:
    for line in tracer_lines:
        data = json.loads(line)
        record = parse_record(line)
        assert record == LiveTrace.from_dict(data)
        again = record.to_dict()
        assert list(again) == list(data)  # same fields, same order
        assert without_times(again) == without_times(data)
        for key in ("started_at", "updated_at"):
            assert parse_timestamp(again[key]) == parse_timestamp(data[key])


def test_tracer_lines_round_trip_exactly(tracer_lines: list[str]) -> None:
    for line in tracer_lines:
        data = json.loads(line)
        assert LiveTrace.from_dict(data).to_dict() == data
        assert LiveTrace.from_dict(data).to_json() + "\n" == line


@pytest.mark.parametrize("ts", [1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.123456])
def test_clock_text_round_trips_through_a_record(ts: float) -> None:
    text = IsoClock().format(ts)
    now = parse_timestamp(text)
    data = LiveTrace("wf", 1, "running", None, (), now, now).to_dict()
    data["started_at"] = data["updated_at"] = text
    again = LiveTrace.from_dict(data).to_dict()
    assert (again["started_at"], again["updated_at"]) == (text, text)


def test_clock_writes_utc_with_offset() -> None:
    text = IsoClock().format(1_700_000_000.25)
    parsed = parse_timestamp(text)
    assert text.endswith("+00:00")
    assert parsed == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)


texts = st.text(max_size=40)
frames = st.builds(
    TraceFrame,
    function=texts,
    file=texts,
    line=st.integers(min_value=0, max_value=10**6),
    code=st.none() | texts,
    call=st.none() | st.integers(min_value=0, max_value=2**63),
    args=st.none() | texts,
)
# To the millisecond, as the tracer writes them.
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
slogs = st.none() | st.builds(SlogLine, msg=texts, fields=st.dictionaries(texts, texts))
opt_int = st.none() | st.integers(min_value=0, max_value=2**31)
records = st.builds(
    LiveTrace,
    workflow_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    step=st.integers(min_value=0, max_value=2**40),
    status=st.sampled_from(["running", "completed", "failed"]),
    current_effect=st.none() | texts,
    trace=st.lists(frames, max_size=4).map(tuple),
    started_at=times,
    updated_at=times,
    error=st.none() | texts,
    result=st.none() | texts,
    last_slog=slogs,
    task=opt_int,
    pid=opt_int,
    host=st.none() | texts,
    run=st.none() | texts,
    trace_exact=st.booleans(),
    pid_start=opt_int,
    spawned=st.lists(st.tuples(st.integers(0, 2**31), opt_int), max_size=3).map(tuple),
    finished_tasks=st.lists(st.tuples(st.integers(0, 2**31), times), max_size=3).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(records)
def test_any_record_round_trips_through_its_json(record: LiveTrace) -> None:
    line = record.to_json()
    assert "\n" not in line
    assert parse_record(line) == record
    assert json.loads(line) == record.to_dict()
    assert LiveTrace.from_dict(json.loads(line)).to_json() == line


def test_equal_frames_are_parsed_into_one_object_and_wrong_types_are_still_refused() -> None:
    line = LiveTrace(
        workflow_id="wf",
        step=1,
        status="running",
        current_effect=None,
        trace=(TraceFrame("main", "flow.py", 1), TraceFrame("step", "flow.py", 7)),
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    ).to_json()
    first, again = parse_record(line), parse_record(line)
    assert first.trace == again.trace
    assert all(a is b for a, b in zip(first.trace, again.trace, strict=True))
    # a huge frame (a hostile trace) is parsed, but not kept for sharing
    huge = line.replace('"function":"step"', '"function":"' + "s" * 5000 + '"')
    big, big_again = parse_record(huge), parse_record(huge)
    assert big.trace == big_again.trace and big.trace[1] is not big_again.trace[1]
    # true == 1 and 1.0 == 1 in Python: a shared frame must not stand in for them
    for wrong in ("true", "1.0"):
        with pytest.raises(MalformedRecord, match="'line' must be int"):
            parse_record(line.replace('"line":1,', f'"line":{wrong},'))


def frame_line(*frames: TraceFrame) -> str:
    return LiveTrace(
        workflow_id="wf",
        step=1,
        status="running",
        current_effect=None,
        trace=frames,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    ).to_json()


def test_call_and_args_round_trip_after_code_and_only_when_known() -> None:
    both = TraceFrame("fetch_page", "/w/pages.py", 20, None, call=7, args="region='apac', pages=4")
    call_only = TraceFrame("fetch_page", "/w/pages.py", 21, "yield Get('k')", call=8)
    neither = TraceFrame("main", "/w/pages.py", 12, "yield fetch_page()")
    line = frame_line(neither, both, call_only)
    assert (
        '"trace":[{"function":"main","file":"/w/pages.py","line":12,"code":"yield fetch_page()"},'
        '{"function":"fetch_page","file":"/w/pages.py","line":20,"code":null,"call":7,'
        '"args":"region=\'apac\', pages=4"},'
        '{"function":"fetch_page","file":"/w/pages.py","line":21,"code":"yield Get(\'k\')",'
        '"call":8}]'
    ) in line
    record = parse_record(line)
    assert record.trace == (neither, both, call_only)
    assert (record.trace[1].call, record.trace[1].args) == (7, "region='apac', pages=4")
    assert (record.trace[2].call, record.trace[2].args) == (8, None)
    assert record.to_json() == line
    # args alone (call unknown) is kept too, and a call of 0 is a call
    alone = parse_record(frame_line(TraceFrame("f", "/w.py", 1, args="x=1", call=0))).trace[0]
    assert (alone.call, alone.args) == (0, "x=1")


def test_frames_without_call_or_args_are_written_as_before() -> None:
    seed = {"function": "main", "file": "flow.py", "line": 3, "code": None}
    line = frame_line(TraceFrame("main", "flow.py", 3))
    assert '"trace":[' + json.dumps(seed, separators=(",", ":")) + "]" in line
    (frame,) = parse_record(line).trace
    assert frame.to_dict() == seed and (frame.call, frame.args) == (None, None)
    # the seed's own frames, code missing or null, without any added field
    for item in ({"function": "main", "file": "flow.py", "line": 3}, seed):
        data = json.loads(line)
        data["trace"] = [item]
        (parsed,) = LiveTrace.from_dict(data).trace
        assert parsed == TraceFrame("main", "flow.py", 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("call", "true", "'call' must be int, got bool"),
        ("call", "7.0", "'call' must be int, got float"),
        ("call", '"7"', "'call' must be int, got str"),
        ("call", "[7]", "'call' must be int, got list"),
        ("args", "5", "'args' must be str, got int"),
        ("args", '["x=1"]', "'args' must be str, got list"),
        ("args", "{}", "'args' must be str, got dict"),
    ],
)
def test_call_and_args_of_the_wrong_type_are_refused(field: str, value: str, message: str) -> None:
    line = frame_line(TraceFrame("fetch", "/w.py", 2, None, call=1, args="a=1"))
    # parsed once the right way first: a shared frame must not stand in for a wrong one
    parse_record(line)
    right = {"call": '"call":1', "args": '"args":"a=1"'}[field]
    wrong = line.replace(right, f'"{field}":{value}')
    assert wrong != line
    with pytest.raises(MalformedRecord, match=re.escape(message)):
        parse_record(wrong)


def test_frames_of_different_calls_are_not_shared_and_sharing_stays_bounded() -> None:
    first = frame_line(TraceFrame("f", "/w.py", 2, None, call=1, args="a=1"))
    one, again = parse_record(first).trace[0], parse_record(first).trace[0]
    assert one is again  # one call's frame, repeated record after record: shared
    others = [
        TraceFrame("f", "/w.py", 2, None, call=2, args="a=1"),
        TraceFrame("f", "/w.py", 2, None, call=1, args="a=2"),
        TraceFrame("f", "/w.py", 2, None, call=1),
        TraceFrame("f", "/w.py", 2, None, args="a=1"),
        TraceFrame("f", "/w.py", 2, None, args=""),
        TraceFrame("f", "/w.py", 2),
    ]
    parsed = [parse_record(frame_line(frame)).trace[0] for frame in others]
    assert parsed == others and len({id(frame) for frame in [one, *parsed]}) == len(others) + 1
    # huge arguments (a hostile trace) count against the text a shared frame may hold
    huge = frame_line(
        TraceFrame("f", "/w.py", 2, None, call=9, args="a" * record_model.MAX_SHARED_TEXT)
    )
    assert parse_record(huge).trace[0] is not parse_record(huge).trace[0]
    # every call has frames of its own: however many calls, the table stays bounded
    for call in range(record_model.MAX_SHARED_FRAMES + 10):
        parse_record(frame_line(TraceFrame("f", "/w.py", 2, None, call=call, args="a=1")))
        assert len(record_model._FRAMES) <= record_model.MAX_SHARED_FRAMES


# -- rendering effects ------------------------------------------------------------------


class Plain(EffectBase):  # type: ignore[misc]
    def __init__(self, **fields: object) -> None:
        super().__init__()
        for name, value in fields.items():
            setattr(self, name, value)


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Default:
    pass


def _helper() -> None:  # pragma: no cover - only its repr is used
    pass


@pytest.mark.parametrize(
    ("effect", "expected"),
    [
        (Get("k"), "Get('k')"),
        (Put("k", [1, 2]), "Put('k', [1, 2])"),
        (Plain(a=1, _hidden=2), "Plain(a=1)"),
        (Plain(obj=Default()), "Plain(obj=Default)"),
        (Plain(fn=_helper), "Plain(fn=_helper)"),
        (Plain(bad=BadRepr()), "Plain(bad=<BadRepr: repr failed: RuntimeError>)"),
    ],
    ids=["get", "put", "private-hidden", "object", "function", "broken-repr"],
)
def test_effects_render_readably(effect: object, expected: str) -> None:
    assert render_effect(effect) == expected


def test_long_effects_are_bounded() -> None:
    text = render_effect(Plain(a="x" * 10_000, b=list(range(1000))))
    assert len(text) <= MAX_EFFECT_CHARS
    assert text.startswith("Plain(a='xxx")
    assert "…" in text  # fields are clipped one by one, then the whole
    assert len(render_effect(Get("k" * 10_000))) <= MAX_EFFECT_CHARS


def test_no_rendering_shows_an_address() -> None:
    for effect in (Plain(), Plain(o=object(), d=Default(), f=_helper, c=Default), Default()):
        assert " at 0x" not in render_effect(effect)
