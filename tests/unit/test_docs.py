"""README.md and docs/: every relative link resolves, every page is reachable, README stays short.

Links are read the way GitHub renders them: inline links and images outside fenced code and
inline code, and reference definitions. A link to a Markdown page with ``#anchor`` must name
one of that page's headings, slugged as GitHub slugs them.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The README is the front page: what it is, the quickstarts, a tour; the rest is in docs/.
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto: ...


@dataclass(frozen=True)
class Link:
    """One link: the page it is on, its line and its target as written."""

    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: ({self.target})"


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1, with inline code blanked."""
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            continue
        if match:
            fence = match.group(1)
            continue
        yield number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


def links(page: Path) -> list[Link]:
    """Every link target on ``page``."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [Link(page, number, target) for target in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def problem(link: Link) -> str | None:
    """Why ``link`` does not resolve, or None when it does (or is external)."""
    if EXTERNAL.match(link.target):
        return None
    path_part, _, anchor = link.target.partition("#")
    target = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if not target.exists():
        return f"{link}: no such file"
    if anchor and target.suffix == ".md" and unquote(anchor).lower() not in anchors(target):
        return f"{link}: no heading with anchor #{anchor} in {target.relative_to(ROOT)}"
    return None


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_readme_stays_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move detail to a page under docs/"
    )


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    problems = [p for p in map(problem, links(page)) if p]
    assert problems == []


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README}, [README]
    while todo:
        for link in links(todo.pop()):
            path_part = link.target.partition("#")[0]
            if EXTERNAL.match(link.target) or not path_part.endswith(".md"):
                continue
            target = (link.page.parent / unquote(path_part)).resolve()
            if target.exists() and target not in reached:
                reached.add(target)
                todo.append(target)
    unreached = sorted(str(p.relative_to(ROOT)) for p in set(pages()) - reached)
    assert unreached == [], "pages no link from README.md leads to"


def test_the_checker_sees_broken_links_and_anchors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The checks above would fail on a dangling file, a missing anchor or a bad self-link,
    and ignore external links and links inside code."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    other = tmp_path / "docs" / "other.md"
    other.write_text("# Other page\n\n## Choosing the broker (Redis or RabbitMQ)\n\n## Notes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n## Notes\n\n## Notes\n\n"
        "[ok](docs/other.md#choosing-the-broker-redis-or-rabbitmq) [self](#notes-1)\n"
        "[ext](https://example.com/nowhere.md) `[code](missing.md)`\n"
        "```md\n[fenced](missing.md)\n```\n"
        "[gone](docs/gone.md) [bad anchor](docs/other.md#nowhere) [bad self](#notes-2)\n"
        "[ref]: docs/also-gone.md\n"
    )
    found = [p for p in map(problem, links(page)) if p]
    assert [f.split(": (", 1)[1] for f in found] == [
        "docs/gone.md): no such file",
        "docs/other.md#nowhere): no heading with anchor #nowhere in docs/other.md",
        "#notes-2): no heading with anchor #notes-2 in README.md",
        "docs/also-gone.md): no such file",
    ]


def readme_cli_examples() -> list[list[str]]:
    """The commands of README's "Command line" block, as argument lists (comments dropped)."""
    section = README.read_text(encoding="utf-8").split("\n## Command line\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.strip()]


def test_the_readme_command_line_examples_name_real_commands_and_options(
    capsys: pytest.CaptureFixture[str],
):
    from orchestrator.cli import main

    examples = readme_cli_examples()
    assert len(examples) >= 5
    for argv in examples:
        path = []
        for word in argv[:2]:
            if not re.fullmatch(r"[a-z]+", word):
                break
            path.append(word)
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
        shown = capsys.readouterr().out
        assert exited.value.code == 0, argv
        for option in (word for word in argv if word.startswith("--") and word != "--"):
            assert option in shown, f"orchestrator {' '.join(path)} has no {option}"


def test_every_task_the_client_sends_has_a_row_in_the_http_api_page():
    """The client's tasks are the public operations: each is reachable through Flower's API,
    so docs/http-api.md's table names it (internal fan-out tasks are sent by workers only)."""
    from orchestrator.protocol import Task

    sources = [*(ROOT / "orchestrator" / "client").glob("*.py")]
    sent = {m for p in sources for m in re.findall(r"Task\.([A-Z_]+)", p.read_text())}
    assert len(sent) >= 10
    table = (DOCS / "http-api.md").read_text(encoding="utf-8")
    missing = sorted(Task[name].value for name in sent if f"`{Task[name].value}`" not in table)
    assert missing == []
