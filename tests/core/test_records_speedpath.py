"""The record parser's quick path for the common record is the same parser: whatever a
line holds, ``from_dict`` gives the same record, or fails with the same reason, as the
field-by-field checks alone; ``loads`` gives what the strict decoder gives."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doeff_flow_core import records
from doeff_flow_core.errors import MalformedRecord
from doeff_flow_core.records import LiveTrace


@contextmanager
def field_by_field() -> Iterator[None]:
    """``from_dict`` without its quick path."""
    with mock.patch.object(records, "_plain_record", lambda cls, data: None):
        yield


def outcome(data: object) -> tuple[str, object]:
    try:
        return ("record", LiveTrace.from_dict(data))
    except MalformedRecord as exc:
        return ("refused", exc.reason)


def both_ways(data: object) -> tuple[tuple[str, object], tuple[str, object]]:
    quick = outcome(data)
    with field_by_field():
        checked = outcome(data)
    return quick, checked


FULL: dict[str, Any] = {
    "workflow_id": "wf-1",
    "step": 7,
    "status": "running",
    "current_effect": "Get('k')",
    "trace": [
        {"function": "main", "file": "/a/main.py", "line": 3, "code": "yield x"},
        {"function": "step", "file": "/a/b.py", "line": 9, "code": None, "call": 4, "args": "1"},
    ],
    "started_at": "2026-01-01T00:00:00.000+00:00",
    "updated_at": "2026-01-01T00:00:01.500+02:00",
    "error": "boom",
    "result": "42",
    "last_slog": {"msg": "loaded", "fields": {"rows": "9", "n": 3}},
    "task": 2,
    "pid": 1234,
    "host": "vm",
    "run": "abc",
    "trace_exact": False,
    "pid_start": 99,
    "spawned": [[2, None], [3, 2]],
    "finished_tasks": [[3, "2026-01-01T00:00:01+00:00"]],
}

VALID = [
    FULL,
    {k: FULL[k] for k in ("workflow_id", "step", "status", "started_at", "updated_at")},
    {**FULL, "trace": None, "last_slog": "plain text", "trace_exact": None},
    {**FULL, "trace": [], "spawned": [], "finished_tasks": None, "status": "completed"},
    {**FULL, "started_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01 00:00:01"},
    {**FULL, "trace": 0, "spawned": 0, "last_slog": {"msg": "m"}},  # falsy: none
    {**FULL, "current_effect": None, "error": None, "result": None, "pid": None, "host": None},
]

INVALID = [
    [],
    "text",
    {**FULL, "step": True},
    {**FULL, "step": 1.0},
    {**FULL, "status": "lost"},
    {**FULL, "status": None},
    {**FULL, "workflow_id": 3},
    {k: v for k, v in FULL.items() if k != "workflow_id"},
    {k: v for k, v in FULL.items() if k != "updated_at"},
    {**FULL, "pid": "12"},
    {**FULL, "pid_start": False},
    {**FULL, "trace_exact": 1},
    {**FULL, "started_at": "yesterday"},
    {**FULL, "updated_at": 5},
    {**FULL, "trace": {"function": "f"}},
    {**FULL, "trace": [{"function": "f", "file": "x.py", "line": "3"}]},
    {**FULL, "trace": ["frame"], "started_at": "yesterday"},  # the frame's error first
    {**FULL, "last_slog": {"msg": 1}},
    {**FULL, "last_slog": {"msg": "m", "fields": [1]}},
    {**FULL, "last_slog": 5, "pid": "x"},  # the slog's error first
    {**FULL, "spawned": [[1]]},
    {**FULL, "spawned": [[1, "2"]]},
    {**FULL, "finished_tasks": [[1, "then"]]},
    {**FULL, "finished_tasks": {"1": "x"}},
]


@pytest.mark.parametrize("data", VALID)
def test_a_valid_record_is_the_same_record_either_way(data: dict[str, Any]) -> None:
    (kind, quick), (_, checked) = both_ways(data)
    assert kind == "record"
    assert quick == checked
    assert type(quick) is LiveTrace
    assert vars(quick) == vars(checked)
    assert repr(quick) == repr(checked)
    assert dataclasses.replace(quick, step=1) == dataclasses.replace(checked, step=1)


def test_a_record_made_quickly_hashes_as_one_made_by_its_constructor() -> None:
    data = {**FULL, "last_slog": None}  # a slog's fields are a dict: no hash
    (_, quick), (_, checked) = both_ways(data)
    assert hash(quick) == hash(checked)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.step = 8  # type: ignore[misc]


@pytest.mark.parametrize("data", INVALID)
def test_an_invalid_record_is_refused_for_the_same_reason_either_way(data: object) -> None:
    quick, checked = both_ways(data)
    assert quick[0] == "refused"
    assert quick == checked


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, width=16),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=2),
)
times = st.sampled_from(
    ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00", "2026-01-01T00:00:00.1-05:00", "no"]
)
frames = st.one_of(
    st.fixed_dictionaries(
        {
            "function": st.one_of(st.sampled_from(["main", "step"]), anything),
            "file": st.one_of(st.just("/a.py"), anything),
            "line": st.one_of(st.integers(1, 3), anything),
        },
        optional={
            "code": st.one_of(st.just("yield x"), anything),
            "call": st.one_of(st.integers(0, 3), anything),
            "args": st.one_of(st.just("1, 2"), anything),
        },
    ),
    anything,
)
slogs = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "msg": st.one_of(st.just("loaded"), anything),
            "fields": st.one_of(
                st.dictionaries(st.text(max_size=2), anything, max_size=2), anything
            ),
        },
    ),
    anything,
)
pairs = st.lists(st.one_of(st.integers(0, 3), st.none(), st.booleans(), times), max_size=3)
fields_of_a_record = {
    "workflow_id": st.one_of(st.just("wf-1"), anything),
    "step": st.one_of(st.integers(0, 9), anything),
    "status": st.one_of(st.sampled_from(["running", "completed", "failed", "lost"]), anything),
    "current_effect": st.one_of(st.just("Get('k')"), anything),
    "trace": st.one_of(st.lists(frames, max_size=3), anything),
    "started_at": st.one_of(times, anything),
    "updated_at": st.one_of(times, anything),
    "error": anything,
    "result": anything,
    "last_slog": slogs,
    "task": anything,
    "pid": st.one_of(st.integers(1, 9), anything),
    "host": st.one_of(st.just("vm"), anything),
    "run": anything,
    "trace_exact": anything,
    "pid_start": anything,
    "spawned": st.one_of(st.lists(st.one_of(pairs, anything), max_size=2), anything),
    "finished_tasks": st.one_of(st.lists(st.one_of(pairs, anything), max_size=2), anything),
}
mostly_right = st.fixed_dictionaries(
    {
        "workflow_id": st.just("wf-1"),
        "step": st.integers(0, 9),
        "status": st.sampled_from(["running", "completed", "failed"]),
        "started_at": times,
        "updated_at": times,
    },
    optional={
        k: v
        for k, v in fields_of_a_record.items()
        if k not in ("workflow_id", "step", "status", "started_at", "updated_at")
    },
)
anyhow = st.fixed_dictionaries({}, optional=fields_of_a_record)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mostly_right, anyhow))
def test_any_object_gets_the_same_answer_either_way(data: dict[str, Any]) -> None:
    quick, checked = both_ways(data)
    assert quick == checked


DOCUMENTS = [
    '{"a": 1}',
    '{"a":1}',
    ' {"a": 1}',
    '{"a": 1} ',
    '{"a": 1}\r',
    '{"a": 1}\n\t ',
    '{"a": 1}\x0b',
    '{"a": 1}x',
    '{"a": 1}{"b": 2}',
    "{",
    "{}",
    '{"a": NaN}',
    '{"a": [Infinity]}',
    '{"a": -Infinity}',
    '{"a": "\x01"}',
    '{"a": 1,}',
    '"text"',
    "[1, 2]",
    "",
    "   ",
    "{" * 100_000,
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
]


def decoded(loads: Any, text: str | bytes) -> tuple[str, object]:
    try:
        return ("value", loads(text))
    except RecursionError:
        return ("error", "RecursionError")
    except ValueError as exc:
        return ("error", f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("text", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_loads_answers_as_the_strict_decoder_does(text: str) -> None:
    expected = decoded(records._DECODER.decode, text)
    assert decoded(records.loads, text) == expected
    assert decoded(records.loads, text.encode()) == expected


def test_loads_still_refuses_what_json_refuses() -> None:
    for text in ('{"a": NaN}', "\ufeff{}"):
        with pytest.raises(ValueError):
            records.loads(text)
    assert records.loads(b'{"a": "\xc3\xa9"}') == json.loads('{"a": "\u00e9"}')
