"""Every relative link and ``#anchor`` in README.md and docs/*.md leads somewhere.

The README keeps the quick start, the tour and the API; the reference lives in docs/.
A page moved or a heading renamed must not leave a link pointing at nothing, so each
link is resolved the way GitHub renders it: a path relative to the page, and an anchor
that is the slug of a heading of the target page (headings inside code blocks are text).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import PROJECT_ROOT

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.split("\n"), 1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower case, punctuation
    dropped (hyphens and underscores kept), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets ``-1``, ``-2`` ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of each Markdown link or image outside code."""
    for number, line in prose_lines(text):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_links(page: Path) -> list[str]:
    """``page:line: target (why)`` for each relative link that leads nowhere."""
    problems: list[str] = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue  # https:, mailto: ... are not this project's to check
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.name}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and dest.suffix != ".md":
            problems.append(f"{where} (an anchor into a file that is not Markdown)")
        elif anchor and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where} (no heading with that anchor in {dest.name})")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [problem for page in pages() for problem in broken_links(page)]
    assert problems == []


def test_the_pages_have_links_to_check() -> None:
    # A checker that finds no links passes vacuously: the README links into docs/, and
    # to its own headings.
    readme = [target for _, target in links((PROJECT_ROOT / "README.md").read_text())]
    assert any(target.startswith("docs/") for target in readme)
    assert any(target.startswith("#") for target in readme)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = {
        target.partition("#")[0]
        for _, target in links((PROJECT_ROOT / "README.md").read_text(encoding="utf-8"))
    }
    docs = sorted(f"docs/{page.name}" for page in (PROJECT_ROOT / "docs").glob("*.md"))
    assert docs, "no pages under docs/"
    assert [page for page in docs if page not in readme] == []


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## `run_workflow`, in short\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#run_workflow-in-short) [ok](#page) [web](https://example.com/x#y)\n"
        "`[in code](missing.md)`\n"
        "```\n# not a heading\n[in a block](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [fenced](#not-a-heading)\n"
    )
    assert broken_links(page) == [
        "page.md:9: missing.md (no such file)",
        "page.md:9: other.md#nope (no heading with that anchor in other.md)",
        "page.md:9: #not-a-heading (no heading with that anchor in page.md)",
    ]


def test_anchors_are_github_slugs() -> None:
    text = (
        "# doeff-flow\n## A 60-second tour\n### `trace_observer`, for your own handler stack\n"
        "## Exit codes\n## Exit codes\n```\n# or: a comment in a code block\n```\n"
    )
    assert anchors(text) == {
        "doeff-flow",
        "a-60-second-tour",
        "trace_observer-for-your-own-handler-stack",
        "exit-codes",
        "exit-codes-1",
    }


def usage_block() -> str:
    """The README's summary of flowctl: the code block that follows ``## flowctl``."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## flowctl\n") :]
    return section.split("```", 2)[1]


def test_the_readme_usage_names_every_flowctl_command_and_option() -> None:
    from flowctl.options import ALL_COMMANDS, GLOBAL_OPTIONS

    block = usage_block()
    lines = {line.split()[0]: line for line in block.splitlines() if line.startswith("  ")}

    def shown(flags: tuple[str, ...], text: str) -> bool:
        return any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) for flag in flags)

    missing = [name for name in ALL_COMMANDS if name not in lines]
    for name, command in ALL_COMMANDS.items():
        for argument in command.arguments:
            if argument.flags and name in lines and not shown(argument.flags, lines[name]):
                missing.append(f"{name} {argument.flags[0]}")
    missing += [o.flags[0] for o in GLOBAL_OPTIONS if not shown(o.flags, block.split("\n")[1])]
    assert missing == []
