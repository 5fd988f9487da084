"""Exit codes and the translation of errors into one line that says how to fix them.

:class:`CliError` is a problem the user can fix; :func:`_error_message` turns it, the
library's errors and unreachable broker or backend connections into that line, and
:func:`exit_code` into the exit code (:data:`EXIT_CODES`, sysexits numbers where one fits).
"""

from __future__ import annotations

import argparse

import redis.exceptions
from kombu.exceptions import OperationalError

from orchestrator.cli.output import _sanitize
from orchestrator.errors import InvalidRequest, OrchestratorError, OrchestratorTimeout
from orchestrator.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: Redis or the broker cannot be reached
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: no answer in time; the task goes on

#: What each exit code means (the command's help lists them).
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the tool run, relic exec, cleanup or doctor check did not succeed",
    EXIT_USAGE: "a usage error or a request to fix (bad option, invalid request, unknown id)",
    EXIT_UNAVAILABLE: "Redis (registry, result backend) or the broker cannot be reached",
    EXIT_TEMPFAIL: "no answer in time (no worker, or the task is still running)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
START_WORKER = "start one with `celery -A worker worker` (see docs/deployment.md)"
START_WORKER_HINT = f"{START_WORKER} or run `orchestrator doctor`"


class CliError(Exception):
    """Raised for a problem the user can fix; the message says how.

    Args:
        message: what went wrong and how to fix it.
        code: the exit code (a usage error unless told).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that ended with ``exc`` (its message already printed)."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, OrchestratorTimeout):
        return EXIT_TEMPFAIL
    if _unreachable_part(exc):
        return EXIT_UNAVAILABLE
    return EXIT_USAGE


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
