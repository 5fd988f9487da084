"""Keeping secret parameter values out of everything a run produces.

One rule for every output (results, errors, parsed JSON, live logs): each non-empty secret
value is masked as ``***`` in every form a tool is likely to print it in: as is and
JSON-escaped always; base64, URL-quoted and hex for values of 4 characters or more.
Masking is best effort against a tool that transforms a secret in other ways.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Iterable
from typing import Any

from orchestrator.models import ToolExecutionRequest, ToolExecutionResult

__all__ = [
    "MASK",
    "secret_values",
    "secret_forms",
    "redact_text",
    "redact_bytes",
    "redact_result",
    "scrub",
]

MASK = "***"
#: Encoded forms of shorter values are a few characters of ordinary text: only the value
#: itself (and its JSON escape) is masked for those.
ENCODED_MIN_LENGTH = 4


def secret_values(request: ToolExecutionRequest) -> list[str]:
    """The secret parameters as they appear in the container's environment."""
    values = request.secret_parameters.values()
    return [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in values]


def secret_forms(secrets: Iterable[str]) -> list[str]:
    """Every form of every non-empty secret that output is searched for, longest first
    (so a form that contains another is masked whole)."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update({secret, json.dumps(secret)[1:-1]})
        if len(secret) < ENCODED_MIN_LENGTH:
            continue
        raw = secret.encode()
        forms.update(
            {
                base64.b64encode(raw).decode(),
                base64.b64encode(raw).decode().rstrip("="),
                base64.urlsafe_b64encode(raw).decode(),
                base64.urlsafe_b64encode(raw).decode().rstrip("="),
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret),
                binascii.hexlify(raw).decode(),
            }
        )
    forms.discard("")
    return sorted(forms, key=len, reverse=True)


def redact_text(text: str, forms: list[str]) -> str:
    """``text`` with every form (from :func:`secret_forms`) replaced by ``***``."""
    for form in forms:
        text = text.replace(form, MASK)
    return text


def redact_bytes(data: bytes, forms: list[str]) -> bytes:
    """Raw output with every form (from :func:`secret_forms`) replaced by ``***``."""
    for form in forms:
        data = data.replace(form.encode(), MASK.encode())
    return data


def redact_result(result: ToolExecutionResult, secrets: list[str]) -> ToolExecutionResult:
    """``result`` with every secret masked in its output, error and parsed JSON result."""
    forms = secret_forms(secrets)
    if not forms:
        return result
    data = result.model_dump()
    for field in ("stdout", "stderr", "error"):
        if data[field] is not None:
            data[field] = redact_text(data[field], forms)
    data["result"] = scrub(data["result"], forms)
    return ToolExecutionResult.model_validate(data)


def scrub(value: Any, forms: list[str]) -> Any:
    """``value`` with every secret form inside its strings (and keys) replaced by ``***``."""
    if isinstance(value, str):
        return redact_text(value, forms)
    if isinstance(value, list):
        return [scrub(item, forms) for item in value]
    if isinstance(value, dict):
        return {scrub(k, forms): scrub(v, forms) for k, v in value.items()}
    return value
