"""The settings reference, generated from :class:`~orchestrator.settings.Settings`.

:func:`markdown_table` renders every field as the operator meets it: the environment
variable, its default written the way the environment takes it, and the field's
description. docs/configuration.md holds that table between :data:`START_MARKER` and
:data:`END_MARKER`; ``python -m orchestrator.config_reference`` (``make config-reference``)
rewrites it there, and a unit test fails when it is out of date. ``orchestrator config``
prints effective values in the same notation (:func:`env_value`).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from orchestrator.settings import Settings, env_name

__all__ = [
    "END_MARKER",
    "REFERENCE_PAGE",
    "START_MARKER",
    "default_text",
    "description",
    "env_name",
    "env_value",
    "markdown_table",
    "reference_block",
    "replace_reference_block",
]

#: The page that holds the generated table, relative to the repository's root.
REFERENCE_PAGE = "docs/configuration.md"
START_MARKER = "<!-- settings:start -->"
END_MARKER = "<!-- settings:end -->"
NONE_TEXT = "(none)"
HOSTNAME_TEXT = "(hostname)"
HEADERS = ("variable", "default", "meaning")


def env_value(value: Any) -> str:
    """A value written the way ``Settings.from_env`` reads it back.

    Lists of plain values are comma-joined, lists of models (``pool``) are JSON,
    booleans are ``true``/``false``, ``None`` is the empty string.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        if any(isinstance(item, BaseModel | dict | list) for item in value):
            return json.dumps(
                [i.model_dump(mode="json") if isinstance(i, BaseModel) else i for i in value]
            )
        return ",".join(env_value(item) for item in value)
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return str(value)


def default_text(field: FieldInfo) -> str:
    """A field's default for the table: the value in backticks, or a placeholder.

    Empty defaults are ``(none)``; the host name's factory is ``(hostname)``, never the
    name of the machine that generated the table. Factories that are a type (``list``) or a
    lambda (a constant list written in Settings) are run; any other function is named.
    """
    factory: Any = field.default_factory
    if factory is socket.gethostname:
        return HOSTNAME_TEXT
    if factory is not None:
        name = getattr(factory, "__name__", "computed")
        if not isinstance(factory, type) and name != "<lambda>":
            return f"({name})"  # some computation: do not run it here
        value = factory()
    else:
        value = field.default
    text = env_value(value)
    return f"`{text}`" if text else NONE_TEXT


def _humanise(field_name: str) -> str:
    return field_name.replace("_", " ").capitalize() + "."


def description(field_name: str, field: FieldInfo) -> str:
    """The field's description, or its name in words when it has none."""
    return (field.description or "").strip() or _humanise(field_name)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """Description text safe in a Markdown table (``<name>`` is not an HTML tag)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(settings_cls: type[Settings] = Settings) -> str:
    """A Markdown table of every field: variable, default and meaning (ends with a newline)."""
    lines = [
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    for name, field in settings_cls.model_fields.items():
        cells = (f"`{env_name(name)}`", default_text(field), _prose(description(name, field)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _bounds(text: str) -> tuple[int, int]:
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"no {START_MARKER} ... {END_MARKER} block")
    return start + len(START_MARKER), end


def reference_block(text: str) -> str:
    """What stands between the markers, without the blank lines around it."""
    start, end = _bounds(text)
    return text[start:end].strip("\n") + "\n"


def replace_reference_block(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    start, end = _bounds(text)
    return text[:start] + "\n" + table.rstrip("\n") + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.config_reference [PAGE | -]``: rewrite the table in ``PAGE``
    (default :data:`REFERENCE_PAGE`, from the current directory), or print it for ``-``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["-"]:
        print(markdown_table(), end="")
        return 0
    path = Path(args[0] if args else REFERENCE_PAGE)
    text = path.read_text(encoding="utf-8")
    updated = replace_reference_block(text, markdown_table())
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        print(f"{path}: settings table updated")
    else:
        print(f"{path}: settings table already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
