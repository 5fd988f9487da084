"""Read a Dockerfile as the engine's classic builder does, for the checks made before a build.

Pure code: it only finds what a build would fetch by itself, outside the sandbox of its
``RUN`` steps. The engine downloads an ``ADD <url>`` source itself, from the host's
network namespace, whatever network the build's steps get; an ``ONBUILD ADD <url>`` of a
base image does the same in every build ``FROM`` it. Base images (``FROM``) are pulled
by the engine too, which the worker does first instead, through its tracked pulls.

The parser follows the builder where these checks depend on it: parser directives
(``# escape=```), continuation lines (comments and empty lines inside them skipped),
case-insensitive keywords, flags (``--chown=...``), JSON (exec) and plain argument forms,
``ARG`` values before the first ``FROM`` substituted into ``FROM`` lines. A ``COPY
--from=<image>`` that names no earlier stage makes the engine pull that image too: it counts
as a base image (pulled first, tracked, its triggers checked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "Instruction",
    "instructions",
    "fetched_sources",
    "trigger_sources",
    "base_images",
    "expand",
    "UnresolvedBase",
]

_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
#: A source the engine fetches itself: a URL of any scheme, or a git address.
_REMOTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|git@)")
#: ``${NAME}``, ``${NAME:-word}``, ``${NAME:+word}`` (groups 1-3) or ``$NAME`` (group 4).
_VARIABLE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True)
class Instruction:
    """One instruction: its first line's number, its keyword in capitals, its arguments."""

    line: int
    keyword: str
    arguments: str


class UnresolvedBase(ValueError):
    """A ``FROM`` (or ``COPY --from``) whose image this module cannot work out (a variable
    it cannot expand)."""

    def __init__(self, line: int, text: str, keyword: str = "FROM") -> None:
        super().__init__(f"line {line}: {keyword} {text}")
        self.line = line
        self.text = text


def _escape_character(lines: list[str]) -> str:
    """The escape (line continuation) character set by a parser directive, if any."""
    for line in lines:
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break  # directives only come first: anything else ends them
        if match.group(1).lower() == "escape" and match.group(2) in ("`", "\\"):
            return match.group(2)
    return "\\"


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined.

    Args:
        text: the Dockerfile.

    Returns:
        Every instruction in order (comments, directives and empty lines left out).
    """
    lines = text.splitlines()
    escape = _escape_character(lines)
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if pending and (not stripped or stripped.startswith("#")):
            continue  # the builder skips these inside a continued instruction
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        body = raw.rstrip()
        if body.endswith(escape):
            pending.append(body[: -len(escape)])
            continue
        found.append(_instruction(start, "".join([*pending, body])))
        pending = []
    if pending:
        found.append(_instruction(start, "".join(pending)))
    return found


def _instruction(line: int, text: str) -> Instruction:
    word, _, rest = text.strip().partition(" ")
    keyword, _, tabbed = word.partition("\t")  # a tab may separate the keyword too
    return Instruction(line, keyword.upper(), (tabbed + " " + rest).strip())


def _words(arguments: str) -> tuple[list[str], list[str]]:
    """(flags, arguments) of an ``ADD``/``COPY``: JSON array form or whitespace form."""
    flags: list[str] = []
    rest = arguments.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return flags, parsed
    return flags, rest.split()


def _remote_sources(instruction: Instruction) -> list[str]:
    """The sources of an ``ADD`` the engine would fetch, or whose value it decides."""
    if instruction.keyword != "ADD":
        return []
    _, words = _words(instruction.arguments)
    # A variable may expand to a URL, from a build argument: it cannot be judged here.
    return [w for w in words[:-1] if _REMOTE.match(w) or "$" in w]


def fetched_sources(dockerfile: str) -> list[tuple[int, str]]:
    """``ADD`` sources the engine would download itself, ``ONBUILD ADD`` ones included.

    A source is counted when it is a URL (any scheme) or a git address, or when it holds
    a variable (``$X``), which a build argument could make one.

    Args:
        dockerfile: the Dockerfile's text.

    Returns:
        (line number, source) of each.
    """
    found = []
    for instruction in instructions(dockerfile):
        if instruction.keyword == "ONBUILD":
            inner = _instruction(instruction.line, instruction.arguments)
            found += [(instruction.line, s) for s in _remote_sources(inner)]
        found += [(instruction.line, s) for s in _remote_sources(instruction)]
    return found


def trigger_sources(triggers: Iterable[str]) -> list[str]:
    """The sources a base image's ``ONBUILD`` triggers would download (see above).

    Args:
        triggers: the image's triggers as the engine stores them (``ADD http://x /y``).
    """
    found = []
    for trigger in triggers:
        found += _remote_sources(_instruction(0, trigger))
    return found


def expand(text: str, values: Mapping[str, str]) -> str:
    """Substitute ``$X``, ``${X}``, ``${X:-word}`` and ``${X:+word}`` as the builder does."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = values.get(name, "")
        if match.group(2) == ":-":
            return value or match.group(3)
        if match.group(2) == ":+":
            return match.group(3) if value else ""
        return value

    return _VARIABLE.sub(one, text)


def _copied_image(instruction: Instruction) -> str | None:
    """The image or stage a ``COPY --from=`` names (``ADD`` has no ``--from``); None when
    there is none or it is a stage number.

    Raises:
        UnresolvedBase: the value holds a variable.
    """
    if instruction.keyword != "COPY":
        return None
    flags, _ = _words(instruction.arguments)
    for flag in flags:
        name, has_value, value = flag.partition("=")
        if name.lower() != "--from" or not has_value:
            continue
        if "$" in value:
            raise UnresolvedBase(instruction.line, instruction.arguments, "COPY")
        return None if value.isdigit() else value  # a number names a stage by position
    return None


def base_images(dockerfile: str, build_args: Mapping[str, str]) -> list[str]:
    """The images a build reads: every ``FROM`` that is neither ``scratch`` nor an earlier
    stage, with the ``ARG`` values declared before the first ``FROM`` (a build argument
    overriding a declared default) substituted, and every ``COPY --from=<image>`` whose
    value is neither an earlier stage's name nor a stage number (the engine would pull that
    image itself).

    Args:
        dockerfile: the Dockerfile's text.
        build_args: the build's arguments.

    Returns:
        The image references, in order, each once.

    Raises:
        UnresolvedBase: a ``FROM`` still holds a variable after substitution, or a ``COPY
            --from`` holds one (the builder expands it with the stage's arguments too).
    """
    values: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False

    def found(ref: str) -> None:
        if ref.lower() not in stages and ref != "scratch" and ref not in images:
            images.append(ref)

    for instruction in instructions(dockerfile):
        if instruction.keyword == "ARG" and not seen_from:
            for declaration in instruction.arguments.split():
                name, has_default, default = declaration.partition("=")
                values[name] = build_args.get(name, default.strip('"') if has_default else "")
        copied = _copied_image(instruction)
        if copied is not None:
            found(copied)
        if instruction.keyword != "FROM":
            continue
        seen_from = True
        words = [w for w in instruction.arguments.split() if not w.startswith("--")]
        if not words:
            continue
        ref = expand(words[0], values)
        if "$" in ref:
            raise UnresolvedBase(instruction.line, instruction.arguments)
        found(ref)
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())  # later FROM lines may name this stage
    return images
