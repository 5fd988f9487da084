"""Exit codes and the translation of errors into one line that says how to fix them.

:class:`CliError` is a problem the user can fix; :func:`_error_message` turns it, the
library's errors and unreachable broker or backend connections into that line.
"""

from __future__ import annotations

import argparse

import redis.exceptions
from kombu.exceptions import OperationalError

from orchestrator.cli.output import _sanitize
from orchestrator.errors import InvalidRequest, OrchestratorError, OrchestratorTimeout
from orchestrator.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
START_WORKER = "start one with `celery -A worker worker` (see README)"
START_WORKER_HINT = f"{START_WORKER} or run `orchestrator doctor`"


class CliError(Exception):
    """Raised for a problem the user can fix; the message says how."""


def _no_worker(seconds: float) -> str:
    return f"no worker answered within {seconds:g} s: is a worker running? {START_WORKER_HINT}"


def _unreachable_part(exc: BaseException) -> str:
    """``broker`` or ``backend`` when ``exc`` (or its cause) is a failed connection, else ''."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    if any(isinstance(e, OperationalError) for e in chain):
        return "broker"
    if any(isinstance(e, redis.exceptions.ConnectionError) for e in chain):
        return "backend"
    return ""


def _unreachable(part: str, settings: Settings | None) -> str:
    if part == "broker":
        url = _sanitize(settings.broker_url) if settings else "the configured URL"
        what, option = "broker", "--broker (ORCHESTRATOR_BROKER_URL)"
    else:
        url = _sanitize(settings.result_backend) if settings else "the configured URL"
        if settings and settings.registry_url != settings.result_backend:
            url += f" or the registry at {_sanitize(settings.registry_url)}"
        what, option = "result backend", "--backend (ORCHESTRATOR_RESULT_BACKEND)"
    return (
        f"cannot reach the {what} at {url}: is Redis running? start it (`redis-server`, or "
        f"`docker run -d -p 6379:6379 redis:7`) or point {option} at a running one"
    )


def _error_message(exc: Exception, args: argparse.Namespace, settings: Settings | None) -> str:
    """The one-line explanation (with the fix) of an error, or '' to let it propagate."""
    if isinstance(exc, CliError | InvalidRequest):
        return str(exc)
    if isinstance(exc, OrchestratorTimeout):
        return _no_worker(args.call_timeout)
    if isinstance(exc, OrchestratorError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OperationalError | redis.exceptions.RedisError | RuntimeError):
        part = _unreachable_part(exc)
        return _unreachable(part, settings) if part else ""
    return ""
