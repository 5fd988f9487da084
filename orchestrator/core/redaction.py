"""Keeping secret parameter values out of everything a run produces."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.models import ToolExecutionRequest, ToolExecutionResult

__all__ = ["secret_values", "redact_result", "scrub", "MASK"]

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask unrelated text


def secret_values(request: ToolExecutionRequest) -> list[str]:
    """The secret parameters as they appear in the container's environment."""
    values = request.secret_parameters.values()
    return [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in values]


def redact_result(result: ToolExecutionResult, secrets: list[str]) -> ToolExecutionResult:
    """``result`` with every secret replaced by ``***`` in its output, error and JSON result.

    A tool may print a secret as is or JSON-escaped (inside a JSON document), so both forms
    are masked in the text fields; the parsed result is walked value by value.
    """
    secrets = [s for s in secrets if len(s) >= MIN_SECRET_LENGTH]
    if not secrets:
        return result
    forms = sorted({*secrets, *(json.dumps(s)[1:-1] for s in secrets)}, key=len, reverse=True)
    data = result.model_dump()
    for field in ("stdout", "stderr", "error"):
        data[field] = scrub(data[field], forms)
    data["result"] = scrub(data["result"], secrets)
    return ToolExecutionResult.model_validate(data)


def scrub(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret inside its strings (and keys) replaced by ``***``."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [scrub(item, secrets) for item in value]
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    return value
