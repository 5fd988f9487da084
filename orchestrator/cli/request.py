"""Requests built from the command line: ``KEY=VALUE`` flags, ``--request`` files, defaults.

Flags win over a request file; unset flags keep the model's defaults.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.cli.errors import CliError
from orchestrator.errors import InvalidRequest
from orchestrator.models import RelicStartRequest, ToolExecutionRequest, parse_request


def _pairs(items: Sequence[str] | None, flag: str, parse_json: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a dict; values parsed as JSON when asked and possible."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{flag} {item!r}: expected KEY=VALUE")
        result[key] = _json_or_text(value) if parse_json else value
    return result


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _overlay(target: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Set the values that are not None (command-line flags win over a request file)."""
    target.update({k: v for k, v in values.items() if v is not None})
    return target


def _load_request(source: str | None) -> dict[str, Any]:
    if source is None:
        return {}
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise CliError(f"--request: cannot read {source}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CliError(f"--request: {source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"--request: {source} must hold a JSON object (a ToolExecutionRequest)")
    return data


def _default_tool_name(request: dict[str, Any]) -> str:
    image = request.get("image")
    if not isinstance(image, str) or not image:
        return "tool"
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-_.")[:64] or "tool"


def _merge_env(request: dict[str, Any], field: str, values: dict[str, Any]) -> None:
    if values:
        request[field] = {**request.get(field, {}), **values}


def _tool_request(args: argparse.Namespace) -> ToolExecutionRequest:
    """The request built from ``--request`` (if any) overlaid with the flags."""
    request = _load_request(args.request)
    _overlay(request, {"image": args.image, "session_id": args.session})
    _overlay(request, {"tool_name": args.tool_name, "network_mode": args.network})
    request.setdefault("tool_name", _default_tool_name(request))
    if args.command:
        request["command"] = args.command
    if args.no_cleanup:
        request["cleanup"] = False
    _merge_env(request, "parameters", _pairs(args.param, "--param", parse_json=True))
    _merge_env(request, "secret_parameters", _pairs(args.secret, "--secret"))
    _merge_env(request, "environment", _pairs(args.env, "--env"))
    limits = {
        "memory_mb": args.memory_mb,
        "cpu_limit": args.cpu,
        "timeout_seconds": args.timeout_seconds,
        "pids_limit": args.pids,
    }
    request["resource_limits"] = _overlay(dict(request.get("resource_limits", {})), limits)
    if args.dockerfile_inline or args.build_context:
        build = {"dockerfile_inline": args.dockerfile_inline, "context": args.build_context}
        request["build"] = _overlay(dict(request.get("build") or {}), build)
    return parse_request(ToolExecutionRequest, request)


def _publish(items: Sequence[str] | None) -> dict[int, int] | None:
    ports: dict[int, int] = {}
    for item in items or []:
        container, sep, host = item.partition(":")
        if not (sep and container.isdigit() and host.isdigit()):
            raise InvalidRequest(f"--publish {item!r}: expected CONTAINER_PORT:HOST_PORT")
        ports[int(container)] = int(host)
    return ports or None


def _relic_request(args: argparse.Namespace) -> RelicStartRequest:
    request: dict[str, Any] = {"relic_name": args.name, "session_id": args.session}
    _overlay(
        request,
        {
            "image": args.image,
            "command": args.command or None,
            "environment": _pairs(args.env, "--env") or None,
            "port": args.port,
            "ports": _publish(args.publish),
            "health_check_endpoint": args.health,
            "health_timeout_seconds": args.health_timeout,
        },
    )
    if getattr(args, "no_health", False):
        request["health_check_endpoint"] = None  # a workspace relic
    limits = _overlay({}, {"memory_mb": args.memory_mb, "cpu_limit": args.cpu})
    if limits:
        # Unset limits keep the relic defaults, not ResourceLimits' tool defaults.
        default = RelicStartRequest.model_fields["resource_limits"].get_default(
            call_default_factory=True
        )
        request["resource_limits"] = {**default.model_dump(), **limits}
    return parse_request(RelicStartRequest, request)
