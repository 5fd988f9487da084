"""Keeping secret parameter values out of everything a run produces and everything stored.

One rule for every output (results, errors, parsed JSON, live logs): each non-empty secret
value is masked as ``***`` in every form a tool is likely to print it in: as is and
JSON-escaped always; base64, URL-quoted and hex for values of 4 characters or more.
Masking is best effort against a tool that transforms a secret in other ways.

Task arguments are masked by structure instead (:func:`redact_call`): every value of every
``secret_parameters`` mapping becomes ``***``, encrypted or not, before arguments are
stored (Celery's extended results), shown (Flower, ``argsrepr``) or logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Iterable
from typing import Any, TypeVar

from orchestrator.models import (
    ExecResult,
    RelicExecRequest,
    RelicStartRequest,
    ToolExecutionRequest,
    ToolExecutionResult,
)

#: A result whose output is masked: a tool run's or an exec's.
_Result = TypeVar("_Result", ToolExecutionResult, ExecResult)

__all__ = [
    "MASK",
    "secret_values",
    "secret_forms",
    "redact_text",
    "redact_bytes",
    "redact_result",
    "redact_exception",
    "redact_call",
    "carries_secrets",
    "call_repr",
    "bounded",
    "scrub",
    "REPR_LIMIT",
]

MASK = "***"
#: Encoded forms of shorter values are a few characters of ordinary text: only the value
#: itself (and its JSON escape) is masked for those.
ENCODED_MIN_LENGTH = 4
#: Longest ``argsrepr`` / ``kwargsrepr`` (the arguments Flower and the worker log show).
REPR_LIMIT = 1024
SECRETS_FIELD = "secret_parameters"
#: Nesting followed by :func:`redact_call`; task arguments are shallow JSON.
MAX_DEPTH = 16


def secret_values(
    request: ToolExecutionRequest | RelicStartRequest | RelicExecRequest,
) -> list[str]:
    """The (decrypted) secret parameters as they appear in the container's environment."""
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


def redact_result(result: _Result, secrets: list[str]) -> _Result:
    """``result`` with every secret masked in its output, error and parsed JSON result."""
    forms = secret_forms(secrets)
    if not forms:
        return result
    data = result.model_dump()
    for field in ("stdout", "stderr", "error"):
        if data[field] is not None:
            data[field] = redact_text(data[field], forms)
    data["result"] = scrub(data["result"], forms)
    return type(result).model_validate(data)


def scrub(value: Any, forms: list[str]) -> Any:
    """``value`` with every secret form inside its strings (and keys) replaced by ``***``."""
    if isinstance(value, str):
        return redact_text(value, forms)
    if isinstance(value, list):
        return [scrub(item, forms) for item in value]
    if isinstance(value, dict):
        return {scrub(k, forms): scrub(v, forms) for k, v in value.items()}
    return value


def redact_exception(exc: BaseException, forms: list[str]) -> BaseException:
    """Mask every secret form in ``exc``'s message and cut its chain, in place.

    The stored failure (Celery's result, with its traceback text) and the worker's log then
    show the error's own, masked message: a chained exception (a pydantic error quoting the
    request, an engine error quoting the environment) is not rendered.

    Returns:
        ``exc`` itself, so callers can ``raise redact_exception(exc, forms)``.
    """
    exc.__cause__ = None
    exc.__context__ = None
    exc.__suppress_context__ = True
    if forms:
        exc.args = tuple(scrub(arg, forms) for arg in exc.args)
        message = getattr(exc, "message", None)
        if isinstance(message, str):
            exc.message = redact_text(message, forms)  # type: ignore[attr-defined]
    return exc


def redact_call(args: Any, kwargs: Any) -> tuple[Any, Any]:
    """Copies of a task's arguments with every ``secret_parameters`` value replaced by ``***``.

    Works on any shape (the request as the first argument, as ``request=``, or its fields as
    keywords) and on values that do not validate, so even a refused request is stored and
    shown without its secrets.
    """
    return _mask_secrets(args, 0), _mask_secrets(kwargs, 0)


def _mask_secrets(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return MASK  # deeper than any request: nothing of it is shown
    if isinstance(value, dict):
        return {
            key: _masked_mapping(item) if key == SECRETS_FIELD else _mask_secrets(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_secrets(item, depth + 1) for item in value]
    return value


def _masked_mapping(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(name): MASK for name in value}
    return MASK if value else value


def carries_secrets(args: Any, kwargs: Any) -> bool:
    """True when a task's arguments hold a non-empty ``secret_parameters`` mapping."""
    return _has_secrets(args, 0) or _has_secrets(kwargs, 0)


def _has_secrets(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return True  # too deep to tell: treat it as secret
    if isinstance(value, dict):
        if value.get(SECRETS_FIELD):
            return True
        return any(_has_secrets(item, depth + 1) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_secrets(item, depth + 1) for item in value)
    return False


def bounded(text: str, limit: int = REPR_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (ending in ``...`` when cut)."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def call_repr(args: Any, kwargs: Any, limit: int = REPR_LIMIT) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` of a task call: secrets masked, each ``limit`` long at most."""
    shown_args, shown_kwargs = redact_call(args, kwargs)
    return bounded(repr(shown_args), limit), bounded(repr(shown_kwargs), limit)
