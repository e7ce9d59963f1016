"""The commands' vocabulary is held once, as data (``options.ALL_COMMANDS``): the parser
and the shell's completer are both built from it, and agree on every command, option,
value and positional argument."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from flowctl import exitcodes
from flowctl.console import Console
from flowctl.options import (
    ALL_COMMANDS,
    COMMANDS,
    GLOBAL_OPTIONS,
    Argument,
    Command,
    Complete,
    GlobalOptions,
    HelpShown,
    Request,
    build_parser,
    find_option,
    parse,
)
from flowctl.shell import LEADING_OPTIONS, FlowCompleter, FlowShell
from flowctl.sources.base import Source
from flowctl.sources.files import FileSource

IDS = ["wf-001", "wf-002", "etl-1"]
ALL = sorted(ALL_COMMANDS)
IN_SHELL = sorted(COMMANDS)


def complete(text: str) -> list[str]:
    completer = FlowCompleter(lambda: IDS)
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def sample(argument: Argument) -> str:
    """A value the parser accepts for ``argument``."""
    if argument.choices:
        return argument.choices[-1]
    if isinstance(argument.completes, tuple):
        return argument.completes[0]
    if argument.completes is Complete.WORKFLOW:
        return "wf-001"
    return "1" if argument.type is not None else "some-value"


def required(command: Command) -> list[str]:
    return [sample(p) for p in command.positionals if not p.optional]


def dest_of(argument: Argument) -> str:
    return argument.dest or argument.name.lstrip("-").replace("-", "_")


def parsed(request: Request, dest: str) -> Any:
    if dest in {field.name for field in fields(GlobalOptions)}:
        return getattr(request.options, dest)
    return getattr(request, dest)


def expected(argument: Argument, value: str) -> Any:
    if not argument.takes_value:
        return True
    return argument.type(value) if argument.type is not None else value


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no commands in the parser")


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings]


def values_for(completes: Complete | tuple[str, ...] | None) -> list[str]:
    """What the completer should offer for a value, in a directory holding d/ and f."""
    if completes is Complete.WORKFLOW:
        return IDS
    if completes is Complete.DIRECTORY:
        return ["d"]
    if completes is Complete.FILE:
        return ["d", "f"]
    return list(completes or ())


@pytest.fixture
def in_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the parser takes every option of the table ----------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_the_parser_takes_every_option_of_the_table(name: str) -> None:
    command = ALL_COMMANDS[name]
    parser = build_parser("flowctl")
    for option in command.options:
        for flag in option.flags:
            value = [sample(option)] if option.takes_value else []
            line = [name, *required(command), flag, *value]
            if option.action == "help":
                with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(HelpShown):
                    parse(parser, line)
                assert f"usage: flowctl {name}" in out.getvalue()
                continue
            request = parse(parser, line)
            assert request.command == name
            want = expected(option, value[0] if value else "")
            assert parsed(request, dest_of(option)) == want, (line, request)


@pytest.mark.parametrize("option", GLOBAL_OPTIONS, ids=lambda o: o.name)
def test_global_options_before_and_after_every_command(option: Argument) -> None:
    parser = build_parser("flowctl")
    value = [sample(option)] if option.takes_value else []
    for name in ALL:
        for line in (
            [option.flags[0], *value, name, *required(ALL_COMMANDS[name])],
            [name, *required(ALL_COMMANDS[name]), option.flags[-1], *value],
        ):
            request = parse(parser, line)
            assert parsed(request, dest_of(option)) == expected(option, value[0] if value else "")


def test_every_positional_is_parsed_into_the_request() -> None:
    parser = build_parser("flowctl")
    for name, command in ALL_COMMANDS.items():
        if not command.positionals:
            continue
        line = [name, *(sample(p) for p in command.positionals)]
        request = parse(parser, line)
        for positional in command.positionals:
            assert parsed(request, dest_of(positional)) == sample(positional), line


def test_every_destination_is_a_field_of_the_request() -> None:
    # parse() copies the namespace into a Request field by field: a new argument whose
    # dest names no field would be parsed and then dropped.
    known = {field.name for field in fields(Request)} | {f.name for f in fields(GlobalOptions)}
    for command in ALL_COMMANDS.values():
        for argument in (*command.arguments, *GLOBAL_OPTIONS):
            assert dest_of(argument) in known, (command.name, argument)


def test_help_shows_each_command_and_argument_of_the_table() -> None:
    parser = build_parser("flowctl")
    top = " ".join(parser.format_help().split())
    for command in ALL_COMMANDS.values():
        assert f"{command.name} {command.help}" in top
        text = " ".join(subparsers(parser)[command.name].format_help().split())
        for argument in (*command.arguments, *GLOBAL_OPTIONS):
            assert " ".join(str(argument.help or argument.metavar).split()) in text
        if command.description is not None:
            assert " ".join(command.description.split()) in text


# -- the parser has no option the table (and so the completer) does not know -----------------


def test_the_parser_has_exactly_the_commands_of_the_table() -> None:
    assert list(subparsers(build_parser("flowctl"))) == list(ALL_COMMANDS)


@pytest.mark.parametrize("name", ALL)
def test_every_option_of_the_parser_is_in_the_table(name: str) -> None:
    parser = subparsers(build_parser("flowctl"))[name]
    command = ALL_COMMANDS[name]
    in_parser = set()
    for action in option_actions(parser):
        for flag in action.option_strings:
            in_parser.add(flag)
            option = find_option(command.options, flag)
            assert option is not None, f"{name} {flag}: not in the vocabulary"
            assert option.takes_value == (action.nargs != 0), f"{name} {flag}"
            assert option.choices == (tuple(action.choices) if action.choices else None)
    assert in_parser == {flag for option in command.options for flag in option.flags}
    positionals = [action.dest for action in parser._actions if not action.option_strings]
    assert positionals == [p.dest for p in command.positionals]


def test_the_options_before_a_command_are_those_the_shell_knows() -> None:
    parser = build_parser("flowctl", shell=True)  # --version is the command line's alone
    in_parser = {flag for action in option_actions(parser) for flag in action.option_strings}
    assert in_parser == {flag for option in LEADING_OPTIONS for flag in option.flags}


@pytest.mark.parametrize("name", IN_SHELL)
def test_the_completer_knows_every_option_of_the_parser(name: str, in_a_directory: Path) -> None:
    parser = subparsers(build_parser("flowctl"))[name]
    offered = complete(f"{name} --")
    after_command = complete(f"{name} ")
    for action in option_actions(parser):
        for flag in action.option_strings:
            if flag.startswith("--"):
                assert flag in offered, f"'{name} --' does not offer {flag}"
            else:
                assert complete(f"{name} {flag}") == [flag]
            after = complete(f"{name} {flag} ")
            if action.nargs == 0:  # a switch: what follows is what follows the command
                assert after == after_command, f"{name} {flag}"
            elif action.choices:
                assert after == list(action.choices), f"{name} {flag}"
            else:
                assert not set(after) & set(IDS), f"{name} {flag} VALUE: no workflow ids"


# -- the completer offers every option of the table -------------------------------------------


def test_the_completer_offers_the_shells_commands() -> None:
    assert complete("") == [*COMMANDS, "help", "exit", "quit"]
    assert complete("help ") == list(COMMANDS)
    assert not any(not command.in_shell for command in COMMANDS.values())
    for command in ALL_COMMANDS.values():
        if not command.in_shell:
            assert complete(f"{command.name} --") == []


@pytest.mark.parametrize("name", IN_SHELL)
def test_the_completer_offers_every_option_of_the_table(name: str, in_a_directory: Path) -> None:
    command = ALL_COMMANDS[name]
    assert complete(f"{name} --") == [option.name for option in command.options]
    for option in command.options:
        assert [c for c in complete(f"{name} {option.name[:-1]}") if c == option.name]
        for flag in option.flags:
            if option.takes_value:
                assert complete(f"{name} {flag} ") == values_for(option.value_completes), flag
                if flag.startswith("--"):
                    assert complete(f"{name} {flag}={sample(option)} -") == complete(f"{name} -")
                # its value is not taken for the command's positional argument
                assert complete(f"{name} {flag} {sample(option)} ") == complete(f"{name} ")


@pytest.mark.parametrize("name", IN_SHELL)
def test_the_completer_offers_each_positional_in_turn(name: str, in_a_directory: Path) -> None:
    command = ALL_COMMANDS[name]
    given: list[str] = []
    for positional in command.positionals:
        text = " ".join([name, *given, ""])
        assert complete(text) == values_for(positional.value_completes)
        given.append(sample(positional))
    assert complete(" ".join([name, *given, ""])) == []


def test_global_options_before_the_command() -> None:
    assert complete("--") == [option.name for option in LEADING_OPTIONS]
    assert complete("--json ") == list(COMMANDS)  # not help, exit: the shell's own words
    assert complete("--trace-dir /tmp h") == ["history"]
    assert complete("--json history w") == ["wf-001", "wf-002"]
    assert complete("--json ps --status f") == ["failed"]


def test_abbreviations_are_read_as_the_parser_reads_them() -> None:
    assert parse(build_parser("flowctl"), ["history", "--la", "5", "wf-001"]).last == 5
    assert complete("history --la 5 w") == ["wf-001", "wf-002"]
    assert complete("history --la ") == []
    assert complete("watch --poll 1 w") == ["wf-001", "wf-002"]


def test_an_unknown_command_completes_nothing() -> None:
    assert complete("nope ") == []
    assert complete("nope --") == []


# -- a line with another source's options does not use the shell's source ---------------------


def test_a_line_naming_another_socket_or_trace_dir_opens_its_own_source(tmp_path: Path) -> None:
    seen: list[tuple[str | None, Source | None]] = []

    def dispatch(console: Console, request: Request, source: Source | None) -> int:
        seen.append((request.command, source))
        return exitcodes.OK

    source = FileSource(tmp_path)
    shell = FlowShell(
        GlobalOptions(trace_dir=str(tmp_path)),
        source,
        dispatch,
        out=io.StringIO(),
        err=io.StringIO(),
        interactive=False,
    )
    for line in ("ps", "ps --json", "ps --socket /nowhere.sock", f"ps --trace-dir {tmp_path}/x"):
        assert shell.execute(line) == exitcodes.OK
    assert [given for _, given in seen] == [source, source, None, None]
