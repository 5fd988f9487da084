"""Commands run in a relic (``orchestrator.relics.exec``): the call both clients send, where
it goes and the handle a caller waits on. Only :func:`relic_queue` does I/O (one Redis
round trip)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.exceptions import TaskRevokedError

from orchestrator import protocol
from orchestrator.client.calls import Call, _sealed_call
from orchestrator.client.resend import Sent
from orchestrator.errors import InvalidRequest
from orchestrator.models import ExecResult, RelicExecRequest, parse_request
from orchestrator.protocol import Task
from orchestrator.state import keys
from orchestrator.state.registry import text

if TYPE_CHECKING:
    from orchestrator.client.sync import OrchestratorClient

__all__ = [
    "ExecHandle",
    "exec_request",
    "exec_call",
    "exec_wait_seconds",
    "relic_queue",
    "cancelled_exec",
    "EXEC_WAIT_SLACK_SECONDS",
]

#: Added to an exec's timeout in a client's default wait: queueing and the kill's grace.
EXEC_WAIT_SLACK_SECONDS = 60.0
#: The wait of an exec whose timeout is the relic's own (unknown to the client).
DEFAULT_EXEC_WAIT_SECONDS = 3600.0


def exec_request(
    relic_id: str,
    command: list[str] | str,
    *,
    stdin: str | bytes | None = None,
    timeout: int | None = None,
    environment: dict[str, str] | None = None,
    secret_parameters: dict[str, Any] | None = None,
    working_dir: str | None = None,
    session_id: str | None = None,
) -> RelicExecRequest:
    """The validated request of a client's ``exec_in_relic`` arguments.

    Raises:
        InvalidRequest: naming the field at fault; nothing is sent.
    """
    if isinstance(stdin, bytes):
        try:
            stdin = stdin.decode()
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"stdin: must be UTF-8 text ({exc})") from exc
    data: dict[str, Any] = {
        "relic_id": relic_id,
        "command": command,
        "environment": environment or {},
        "secret_parameters": secret_parameters or {},
        "working_dir": working_dir,
        "stdin": stdin,
        "timeout_seconds": timeout,
        "session_id": session_id,
    }
    return parse_request(RelicExecRequest, data)


def exec_call(request: RelicExecRequest, payload: dict[str, Any], queue: str) -> Call[ExecResult]:
    """The exec as a call (``payload``: the sealed request), waited for up to its timeout
    plus :data:`EXEC_WAIT_SLACK_SECONDS`."""
    wait = exec_wait_seconds(request)
    return _sealed_call(Task.RELICS_EXEC, payload, ExecResult.model_validate, wait, queue, None)


def exec_wait_seconds(request: RelicExecRequest) -> float:
    """How long a client waits for an exec by default: its timeout plus
    :data:`EXEC_WAIT_SLACK_SECONDS`, or :data:`DEFAULT_EXEC_WAIT_SECONDS` without one."""
    if request.timeout_seconds is None:
        return DEFAULT_EXEC_WAIT_SECONDS
    return request.timeout_seconds + EXEC_WAIT_SLACK_SECONDS


def relic_queue(redis: Any, relic_id: str) -> str:
    """The queue of the host that has the relic; the shared relics queue when unknown (the
    worker then answers RelicNotFound, or HostUnavailable when its host has no worker)."""
    host = text(redis.hget(keys.relic(relic_id), "host"))
    if host and redis.exists(keys.host(host)):
        return protocol.host_queue(host)
    return protocol.RELICS_QUEUE


def cancelled_exec(request: RelicExecRequest, exec_id: str) -> ExecResult:
    """The result of an exec revoked before a worker started it."""
    return ExecResult(
        exec_id=exec_id,
        relic_id=request.relic_id,
        session_id=request.session_id or "",
        status="cancelled",
        error="cancelled before it started",
    )


class ExecHandle:
    """An exec that was sent; ``id`` is its exec id (cancel it with ``cancel_tool(id)``,
    follow its output with ``follow_logs(id)``)."""

    def __init__(self, client: OrchestratorClient, sent: Sent, request: RelicExecRequest) -> None:
        self.client = client
        self.sent = sent
        self.id: str = sent.async_result.id
        self.request = request
        self.wait_seconds = exec_wait_seconds(request)

    @property
    def state(self) -> str:
        """The Celery state: PENDING, RUNNING, SUCCESS, FAILURE, REVOKED."""
        return str(self.sent.async_result.state)

    def result(self, timeout: float | None = None) -> ExecResult:
        """Wait for the command to end and return its result.

        Args:
            timeout: seconds to wait; None waits its timeout plus a minute.

        Raises:
            OrchestratorTimeout: no result in time (the exec goes on).
            RelicNotFound / Forbidden / LimitExceeded / InvalidRequest: refused; nothing ran.
        """
        try:
            data = self.client._wait(self.sent, self.wait_seconds if timeout is None else timeout)
        except TaskRevokedError:
            return cancelled_exec(self.request, self.id)
        return ExecResult.model_validate(data)
