"""The interactive shell: the same commands through the same dispatcher, with completion
of commands, options, their values and workflow ids (all read from the commands'
vocabulary, ``options.COMMANDS``, that the parser is built from too), a history file,
and a bottom toolbar.

The dispatcher (``commands.dispatch``) is handed to the shell by the ``shell`` command
that starts it: the shell never imports ``flowctl.commands``, which imports it.

Ctrl-C clears the line (and leaves a running ``watch``, back to the prompt); Ctrl-D or
``exit`` leaves the shell.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Final, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from doeff_flow_core.escape import safe
from doeff_flow_core.locations import state_dir
from flowctl import exitcodes
from flowctl.console import Console, escaped
from flowctl.errors import FlowctlError, UsageError
from flowctl.options import (
    COMMANDS,
    GLOBAL_OPTIONS,
    HELP,
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
from flowctl.render.box import status_counts
from flowctl.sources.base import Source
from flowctl.sources.connect import rechosen

# ``commands.dispatch``: runs one parsed line (with the shell's source when it applies).
Dispatch = Callable[[Console, Request, Source | None], int]

HISTORY_FILE: Final = "flowctl_history"
CACHE_SECONDS: Final = 2.0
DUTY_DIVISOR: Final = 50
SHELL_WORDS: Final = {"help": "this help; 'help CMD' for a command's options", "exit": "leave"}
# The options a line takes before its command.
LEADING_OPTIONS: Final = (*GLOBAL_OPTIONS, HELP)


class Cached:
    """A value recomputed at most every CACHE_SECONDS, and never for more than
    1/DUTY_DIVISOR of the time (listing 10,000 workflows takes a while)."""

    def __init__(self, compute: Callable[[], str | list[str]]) -> None:
        self._compute = compute
        self._value: str | list[str] | None = None
        self._at = 0.0
        self._lifetime = CACHE_SECONDS

    def get(self) -> str | list[str]:
        now = time.monotonic()
        if self._value is None or now - self._at >= self._lifetime:
            self._value = self._compute()
            self._at = time.monotonic()
            self._lifetime = max(CACHE_SECONDS, (self._at - now) * DUTY_DIVISOR)
        return self._value


@dataclass
class Line:
    """The words typed before the cursor, read as the parser reads them."""

    command: Command | None = None
    pending: Argument | None = None  # the option whose value comes next
    positionals: int = 0  # the command's positional arguments given

    @property
    def options(self) -> tuple[Argument, ...]:
        return LEADING_OPTIONS if self.command is None else self.command.options


def read_line(words: Iterable[str]) -> Line | None:
    """``words`` read against the vocabulary; None when they name no command of the shell."""
    line = Line()
    for word in words:
        if line.pending is not None:
            line.pending = None
        elif word.startswith("-") and word != "-":
            option = find_option(line.options, word)
            if option is not None and option.takes_value and "=" not in word:
                line.pending = option
        elif line.command is None:
            line.command = COMMANDS.get(word)
            if line.command is None:
                return None
        else:
            line.positionals += 1
    return line


class FlowCompleter(Completer):
    """Commands first; then the command's options, each option's value (its choices,
    directories, files) and the command's positional arguments (workflow ids)."""

    def __init__(self, workflow_ids: Callable[[], Iterable[str]]) -> None:
        self._workflow_ids = workflow_ids
        self._paths = PathCompleter(only_directories=True, expanduser=True)
        self._files = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text.endswith(" ") else words[-1]
        before = words if current == "" else words[:-1]
        if before[:1] in (["help"], ["?"]):
            yield from _matching(COMMANDS, current)
            return
        line = read_line(before)
        if line is None:
            return
        if line.pending is not None:
            yield from self._values(line.pending.value_completes, current, complete_event)
        elif current.startswith("-"):
            yield from _matching(_spellings(line.options, current), current)
        elif line.command is None:
            own = [] if before else [*SHELL_WORDS, "quit"]  # the shell's words: first only
            yield from _matching([*COMMANDS, *own], current)
        elif line.positionals < len(line.command.positionals):
            positional = line.command.positionals[line.positionals]
            yield from self._values(positional.value_completes, current, complete_event)

    def _values(
        self,
        completes: Complete | tuple[str, ...] | None,
        current: str,
        complete_event: CompleteEvent,
    ) -> Iterable[Completion]:
        if completes is Complete.WORKFLOW:
            yield from _matching(self._workflow_ids(), current)
        elif completes is Complete.DIRECTORY:
            yield from self._paths.get_completions(Document(current), complete_event)
        elif completes is Complete.FILE:
            yield from self._files.get_completions(Document(current), complete_event)
        elif completes is not None:
            yield from _matching(completes, current)


def _spellings(options: Iterable[Argument], current: str) -> list[str]:
    """The long flags; the short ones too once a word is more than a single dash."""
    names = [option.name for option in options]
    if current != "-" and not current.startswith("--"):
        names += [flag for option in options for flag in option.flags if flag not in names]
    return names


def _matching(candidates: Iterable[str], prefix: str) -> Iterable[Completion]:
    for candidate in candidates:
        if candidate.startswith(prefix):
            yield Completion(candidate, start_position=-len(prefix))


def open_history() -> History:
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / HISTORY_FILE
        path.touch(mode=0o600, exist_ok=True)
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()


class FlowShell:
    """A prompt-toolkit shell over ``source``; ``run()`` returns the exit code."""

    def __init__(
        self,
        options: GlobalOptions,
        source: Source,
        dispatch: Dispatch,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        interactive: bool | None = None,
        history: History | None = None,
        input: Input | None = None,
        output: Output | None = None,
    ) -> None:
        self.options = options
        self.source = source
        self._dispatch = dispatch
        self._parser = build_parser("flowctl", shell=True)
        out = out or sys.stdout
        if interactive is None:
            interactive = sys.stdin.isatty() and sys.stdout.isatty()
        self.console = Console(out, err or escaped(sys.stderr), interactive, in_shell=True)
        self._ids = Cached(lambda: self.source.workflow_ids())
        self._toolbar = Cached(self._toolbar_text)
        self._history, self._input, self._output = history, input, output
        self.active_prompt: PromptSession[str] | None = None  # while ``run`` runs

    def _cached_ids(self) -> list[str]:
        ids = self._ids.get()
        return ids if isinstance(ids, list) else []

    def _toolbar_text(self) -> str:
        where = f" source: {self.source.kind} ({safe(self.source.location)})"
        try:
            counts = status_counts(entry.status for entry in self.source.list_workflows())
        except FlowctlError as exc:
            return f"{where} · {safe(str(exc))}"
        return f"{where} · {counts} "

    def toolbar(self) -> str:
        return str(self._toolbar.get())

    def _print(self, text: str) -> None:
        self.console.out.write(text + "\n")
        self.console.out.flush()

    def help(self, topic: str | None = None) -> int:
        if topic is None:
            lines = ["commands:"]
            lines += [f"  {c.name:<9}{c.summary}" for c in COMMANDS.values() if c.name != "shell"]
            lines += [f"  {name:<9}{text}" for name, text in SHELL_WORDS.items()]
            lines.append("Ctrl-C leaves a watch; Ctrl-D or 'exit' leaves the shell.")
            self._print("\n".join(lines))
            return exitcodes.OK
        try:
            with redirect_stdout(self.console.out):
                parse(self._parser, [topic, "--help"])
        except HelpShown:
            return exitcodes.OK
        except UsageError:
            pass
        print(f"flowctl: no command {topic!r} (try 'help')", file=self.console.err)
        return exitcodes.USAGE

    def execute(self, line: str) -> int | None:
        """Run one line; None when it asks to leave the shell."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            print(f"flowctl: {exc}", file=self.console.err)
            return exitcodes.USAGE
        if not words:
            return exitcodes.OK
        if words[0] in ("exit", "quit"):
            return None
        if words[0] in ("help", "?"):
            return self.help(words[1] if len(words) > 1 else None)
        try:
            with redirect_stdout(self.console.out):
                request = parse(self._parser, words, base=self.options)
        except HelpShown:
            return exitcodes.OK
        except UsageError as exc:
            print(f"flowctl: {exc}", file=self.console.err)
            return exitcodes.USAGE
        same_source = (request.options.trace_dir, request.options.socket) == (
            self.options.trace_dir,
            self.options.socket,
        )
        if not same_source:
            return self._dispatch(self.console, request, None)
        self.source = rechosen(self.source, self.options, self.console.err)
        return self._dispatch(self.console, request, self.source)

    def run_lines(self, lines: Iterable[str]) -> int:
        """Commands read from a file or pipe, one a line, no prompt: the last one's code."""
        code = exitcodes.OK
        for line in lines:
            result = self.execute(line)
            if result is None:
                break
            code = result
        return code

    def run(self) -> int:
        """The interactive loop, until Ctrl-D or ``exit``."""
        prompt: PromptSession[str] = PromptSession(
            "flowctl> ",
            completer=FlowCompleter(self._cached_ids),
            history=self._history if self._history is not None else open_history(),
            bottom_toolbar=self.toolbar,
            refresh_interval=CACHE_SECONDS,  # the toolbar's counts stay current
            input=self._input,
            output=self._output,
        )
        self.active_prompt = prompt
        self._print(
            f"flowctl shell: {self.source.kind} in {safe(self.source.location)}. "
            "Type 'help'; Ctrl-D leaves."
        )
        while True:
            try:
                line = prompt.prompt()
            except KeyboardInterrupt:
                continue
            except EOFError:
                return exitcodes.OK
            if self.execute(line) is None:
                return exitcodes.OK


def run_shell_session(options: GlobalOptions, source: Source, dispatch: Dispatch) -> int:
    shell = FlowShell(options, source, dispatch)
    return shell.run() if sys.stdin.isatty() else shell.run_lines(sys.stdin)
