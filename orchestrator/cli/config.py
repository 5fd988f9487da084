"""``orchestrator config``: the effective settings, or the Markdown reference of all of them."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli.errors import EXIT_OK
from orchestrator.cli.output import _print_json, _sanitize
from orchestrator.config_reference import env_name, env_value, markdown_table
from orchestrator.settings import Settings

MASK = "**"


def _mask_urls(value: str) -> str:
    """Passwords in a URL (or in each of a ``;``-separated list of them) replaced by ``**``."""
    return ";".join(_sanitize(part) if "://" in part else part for part in value.split(";"))


def _mask_basic_auth(value: str) -> str:
    """``user:password[,user:password]`` with every password replaced by ``**``."""
    pairs = [pair.strip() for pair in value.split(",") if pair.strip()]
    return ",".join(pair.partition(":")[0] + ":" + MASK for pair in pairs)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by its environment variable, JSON-typed, secrets masked."""
    data = settings.model_dump(mode="json")
    values: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = data[name]
        if name == "flower_basic_auth" and isinstance(value, str):
            value = _mask_basic_auth(value)
        elif isinstance(value, str) and "://" in value:
            value = _mask_urls(value)
        values[env_name(name)] = value
    return values


def _cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(), end="")
        return EXIT_OK
    values = effective_settings(settings)
    if args.json:
        _print_json(values)
    else:
        for key, value in values.items():
            print(f"{key}={env_value(value)}")
    return EXIT_OK
