"""Every effect doeff_core_effects exports runs under run_workflow as it does under `doeff run`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from doeff import (
    AcquireSemaphore,
    Ask,
    Await,
    Cancel,
    CompletePromise,
    CreateExternalPromise,
    CreatePromise,
    CreateSemaphore,
    Err,
    FailPromise,
    Gather,
    Get,
    Listen,
    Local,
    Nothing,
    Ok,
    Put,
    Race,
    ReleaseSemaphore,
    SlogEffect,
    Spawn,
    TaskCancelledError,
    Tell,
    Try,
    Wait,
    do,
    slog,
)
from doeff.cli.run_services import default_interpreter
from doeff_core_effects import Absent, Discard, MissingEnvKeyError, Raise, maybe, result, writer_log

from doeff_flow_core import read_history, read_latest, run_workflow

# -- one small program per effect --------------------------------------------------------


@do
def ask() -> Any:
    return (yield Ask("greeting"))


@do
def get_put() -> Any:
    before = yield Get("count")
    yield Put("count", before + 1)
    return (before, (yield Get("count")))


@do
def tells(*messages: str) -> Any:
    for message in messages:
        yield Tell(message)
    return len(messages)


@do
def tell() -> Any:
    yield tells("a", "b")
    return (yield writer_log())


@do
def listen() -> Any:
    value, heard = yield Listen(tells("x", "y"))
    after = yield writer_log()  # Listen observes; the writer still keeps what was told
    return (value, [effect.msg for effect in heard], after)


@do
def logs() -> Any:
    yield slog("inside", step=1)
    return "logged"


@do
def listen_slog() -> Any:
    value, heard = yield Listen(logs(), types=(SlogEffect,))
    return (value, [(effect.msg, effect.kwargs) for effect in heard])


@do
def local() -> Any:
    inside = yield Local({"greeting": "hey"}, ask())
    return (inside, (yield Ask("greeting")))


@do
def boom() -> Any:
    yield Put("touched", True)
    raise ValueError("boom")


@do
def try_() -> Any:
    caught = yield Try(boom())
    fine = yield Try(ask())
    assert isinstance(caught, Err) and isinstance(fine, Ok)
    return (type(caught.error).__name__, str(caught.error), fine.value)


@do
def try_missing_key() -> Any:
    caught = yield Try(Ask("nope"))
    assert isinstance(caught, Err)
    return (type(caught.error).__name__, getattr(caught.error, "key", None))


UNHANDLED_ASK = ("UnhandledEffect", None)


@do
def try_in_local() -> Any:
    caught = yield Local({"greeting": "hey"}, Try(boom()))
    assert isinstance(caught, Err)
    return str(caught.error)


@do
def times_ten() -> Any:
    return (yield Ask("base")) * 10


@do
def local_lazy() -> Any:
    inside = yield Local({"base": 2}, Ask("derived"))
    return (inside, (yield Ask("derived")))


@do
def listen_in_try() -> Any:
    caught = yield Try(Listen(boom()))
    assert isinstance(caught, Err)
    return str(caught.error)


@do
def tells_then_fails() -> Any:
    yield Tell("before")
    raise ValueError("after")


@do
def try_in_listen() -> Any:
    caught, heard = yield Listen(Try(tells_then_fails()))
    assert isinstance(caught, Err)
    return (str(caught.error), [effect.msg for effect in heard])


@do
def listen_spawned() -> Any:
    @do
    def spawns() -> Any:
        task = yield Spawn(tells("from task"))
        return (yield Wait(task))

    value, heard = yield Listen(spawns())
    return (value, [effect.msg for effect in heard])


@do
def slogs() -> Any:
    yield slog("quiet", level="info")
    return "done"


async def sleep_then(value: int) -> int:
    await asyncio.sleep(0)
    return value


@do
def await_() -> Any:
    return (yield Await(sleep_then(7)))


async def fails_later() -> int:
    await asyncio.sleep(0)
    raise LookupError("gone")


@do
def try_await() -> Any:
    caught = yield Try(Await(fails_later()))
    assert isinstance(caught, Err)
    return (type(caught.error).__name__, str(caught.error))


@do
def double(x: int) -> Any:
    return x * 2


@do
def spawn_wait() -> Any:
    task = yield Spawn(double(2))
    return (yield Wait(task))


@do
def gather() -> Any:
    tasks = []
    for i in range(3):
        tasks.append((yield Spawn(double(i))))
    return (yield Gather(*tasks))


@do
def waits_on(future: Any) -> Any:
    return (yield Wait(future))


@do
def race() -> Any:
    never = yield CreatePromise()
    slow = yield Spawn(waits_on(never.future))
    fast = yield Spawn(double(21))
    winner = yield Race(slow, fast)
    yield Cancel(slow)
    try:
        yield Wait(slow)
    except TaskCancelledError:
        return winner
    return "loser not cancelled"


@do
def cancel() -> Any:
    never = yield CreatePromise()
    task = yield Spawn(waits_on(never.future))
    yield Await(sleep_then(0))  # let the task start and park on the promise
    yield Cancel(task)
    try:
        yield Wait(task)
    except TaskCancelledError:
        return "cancelled"
    return "not cancelled"


@do
def discard() -> Any:
    never = yield CreatePromise()
    task = yield Spawn(waits_on(never.future))
    yield Await(sleep_then(0))
    yield Discard(task)
    try:
        yield Wait(task)
    except TaskCancelledError:
        return "discarded"
    return "not discarded"


@do
def promise() -> Any:
    made = yield CreatePromise()
    waiter = yield Spawn(waits_on(made.future))
    yield CompletePromise(made, 5)
    return (yield Wait(waiter))


@do
def fail_promise() -> Any:
    made = yield CreatePromise()
    yield FailPromise(made, ValueError("refused"))
    try:
        yield Wait(made.future)
    except ValueError as error:
        return str(error)
    return "not failed"


@do
def external_promise() -> Any:
    made = yield CreateExternalPromise()
    threading.Thread(target=made.complete, args=(9,)).start()
    return (yield Wait(made.future))


@do
def holder(sem: Any, log: list[str], name: str) -> Any:
    yield AcquireSemaphore(sem)
    log.append(name)
    yield ReleaseSemaphore(sem)


@do
def semaphore() -> Any:
    log: list[str] = []
    sem = yield CreateSemaphore(1)
    yield AcquireSemaphore(sem)
    task = yield Spawn(holder(sem, log, "task"))
    yield Await(sleep_then(0))  # the task runs now and must block on the held permit
    log.append("main")
    yield ReleaseSemaphore(sem)
    yield Wait(task)
    return log


@do
def raises_reason() -> Any:
    yield Raise("no stock")
    return "unreached"


@do
def raise_() -> Any:
    caught = yield result(raises_reason())
    assert isinstance(caught, Err)
    return caught.error


@do
def absent_() -> Any:
    return (yield maybe(Absent("no row")))


# -- the cases ---------------------------------------------------------------------------


SAME = object()


@dataclass(frozen=True)
class Case:
    program: Callable[[], Any]
    expected: Any
    env: Mapping[str, Any] = field(default_factory=lambda: {"greeting": "hi"})
    store: Mapping[str, Any] = field(default_factory=lambda: {"count": 41})
    # What `doeff run` gives when it differs: its lazy_ask passes a missing key on.
    under_doeff_run: Any = SAME


CASES: dict[str, Case] = {
    "Ask": Case(ask, "hi"),
    "Get/Put": Case(get_put, (41, 42)),
    "Tell": Case(tell, ["a", "b"]),
    "Listen": Case(listen, (2, ["x", "y"], ["x", "y"])),
    "Listen-Slog": Case(listen_slog, ("logged", [("inside", {"step": 1})])),
    "Local": Case(local, ("hey", "hi")),
    "Try": Case(try_, ("ValueError", "boom", "hi")),
    "Try-Ask-missing": Case(
        try_missing_key, ("MissingEnvKeyError", "nope"), under_doeff_run=UNHANDLED_ASK
    ),
    "Try-in-Local": Case(try_in_local, "boom"),
    "Try-Listen": Case(listen_in_try, "boom"),
    "Listen-Try": Case(try_in_listen, ("after", ["before"])),
    "Listen-Spawn": Case(listen_spawned, (1, ["from task"])),
    "Local-lazy-env": Case(local_lazy, (20, 10), env={"base": 1, "derived": times_ten()}),
    "Try-Await": Case(try_await, ("LookupError", "gone")),
    "Slog": Case(slogs, "done"),
    "Await": Case(await_, 7),
    "Spawn/Wait": Case(spawn_wait, 4),
    "Gather": Case(gather, [0, 2, 4]),
    "Race": Case(race, 42),
    "Cancel": Case(cancel, "cancelled"),
    "Discard": Case(discard, "discarded"),
    "CreatePromise/CompletePromise": Case(promise, 5),
    "FailPromise": Case(fail_promise, "refused"),
    "CreateExternalPromise": Case(external_promise, 9),
    "Semaphore": Case(semaphore, ["main", "task"]),
    "Raise": Case(raise_, "no stock"),
    "Absent": Case(absent_, Nothing),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_effect_runs_under_run_workflow(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    outcome = run_workflow(case.program(), "wf-effect", tmp_path, env=case.env, store=case.store)
    assert outcome.error is None, repr(outcome.error)
    assert outcome.value == case.expected
    last = read_latest(outcome.trace_path)
    assert last is not None
    assert last.status == "completed"
    assert last.run == outcome.run_id
    # A workflow's slog is recorded in the trace, never printed.
    assert capsys.readouterr().err == ""


@do
def with_env_and_store(env: Mapping[str, Any], store: Mapping[str, Any], program: Any) -> Any:
    for key, value in store.items():
        yield Put(key, value)
    return (yield Local(dict(env), program))


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_expected_value_is_what_doeff_run_gives(name: str) -> None:
    """The default interpreter of `doeff run` (env and store put in place by the program)."""
    case = CASES[name]
    program = with_env_and_store(case.env, case.store, case.program())
    expected = case.expected if case.under_doeff_run is SAME else case.under_doeff_run
    assert default_interpreter(program) == expected


def test_slog_reaches_the_trace(tmp_path: Path) -> None:
    outcome = run_workflow(slogs(), "wf-slog", tmp_path)
    assert outcome.value == "done"
    slogs_seen = [r.last_slog for r in read_history(outcome.trace_path, 1000).records]
    assert any(s is not None and s.msg == "quiet" for s in slogs_seen)


def test_missing_env_key_fails_the_workflow(tmp_path: Path) -> None:
    outcome = run_workflow(ask(), "wf-missing", tmp_path, env={"other": 1})
    assert isinstance(outcome.error, MissingEnvKeyError)
    last = read_latest(outcome.trace_path)
    assert last is not None and last.status == "failed"
