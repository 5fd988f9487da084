"""What each client call sends and how its answer is read, shared by both clients.

A :class:`Call` is the task name, its arguments, where it goes, how long a client waits for
it by default and how the answer becomes a model. :class:`~orchestrator.client.sync.
OrchestratorClient` sends and waits with blocking calls,
:class:`~orchestrator.client.aio.AsyncOrchestratorClient` with coroutines; both build their
calls here, so the two cannot drift apart. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from orchestrator import protocol
from orchestrator.client.resend import Sent
from orchestrator.core import redaction
from orchestrator.errors import OrchestratorTimeout
from orchestrator.models import (
    AggregateStats,
    CleanupReport,
    ContainerStats,
    RelicInfo,
    RelicStartRequest,
    ToolExecutionRequest,
    ToolExecutionResult,
)
from orchestrator.protocol import Task

__all__ = [
    "Call",
    "RunHandle",
    "ExecutionProgress",
    "QUICK_SECONDS",
    "SLOW_SECONDS",
    "CLEANUP_SECONDS",
    "cancelled_result",
    "execution_from_meta",
    "no_result",
]

T = TypeVar("T")

#: Default waits (seconds) of the calls that have no time limit of their own.
QUICK_SECONDS = 60.0
SLOW_SECONDS = 120.0
CLEANUP_SECONDS = 300.0
CANCEL_SECONDS = 30.0


class ExecutionProgress(dict[str, Any]):
    """The state of an execution that has not finished: ``{"execution_id", "state", ...}``."""


def _mapping(data: Any) -> dict[str, Any]:
    return dict(data)


def _relics(data: Any) -> list[RelicInfo]:
    return [RelicInfo.model_validate(item) for item in data]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One task to send and how to read its answer.

    Attributes:
        task: the Celery task name.
        args: its positional arguments (JSON).
        decode: turns the task's return value into what the client method returns.
        wait_seconds: how long a client waits for the answer when the caller gives no timeout.
        queue: the queue; ``None`` lets the routes decide.
        session_id: route to the host that holds this session (the registry knows which).
        argsrepr: what Flower shows instead of the arguments (secrets masked).
    """

    task: str
    args: list[Any]
    decode: Callable[[Any], T]
    wait_seconds: float = QUICK_SECONDS
    queue: str | None = None
    session_id: str | None = None
    argsrepr: str | None = None

    def wait(self, timeout: float | None) -> float:
        """``timeout``, or this call's default wait when it is None."""
        return self.wait_seconds if timeout is None else timeout


def _sealed_call(
    task: str,
    payload: dict[str, Any],
    decode: Callable[[Any], T],
    wait: float,
    queue: str,
    session_id: str | None,
) -> Call[T]:
    argsrepr, _ = redaction.call_repr([payload], {})
    return Call(task, [payload], decode, wait, queue, session_id, argsrepr)


def execute_tool(
    request: ToolExecutionRequest, payload: dict[str, Any], slack: float
) -> Call[ToolExecutionResult]:
    """A tool run (``payload``: the sealed request); waited for up to its limit + ``slack``."""
    return _sealed_call(
        Task.TOOLS_EXECUTE,
        payload,
        ToolExecutionResult.model_validate,
        request.resource_limits.timeout_seconds + slack,
        protocol.TOOLS_QUEUE,
        # A run on the session's network goes to the session's host; any host runs the others.
        request.session_id if request.network_mode == "session" else None,
    )


def start_relic(
    request: RelicStartRequest, payload: dict[str, Any], slack: float
) -> Call[RelicInfo]:
    """A relic start, on its session's host; waited for up to its health timeout + ``slack``."""
    return _sealed_call(
        Task.RELICS_START,
        payload,
        RelicInfo.model_validate,
        request.health_timeout_seconds + slack,
        protocol.RELICS_QUEUE,
        request.session_id,
    )


def cancel_tool(execution_id: str) -> Call[dict[str, Any]]:
    """Cancel a run on whichever host has it."""
    return Call(Task.TOOLS_CANCEL, [execution_id], _mapping, CANCEL_SECONDS)


def get_relic(relic_id: str) -> Call[RelicInfo]:
    """A relic's current info."""
    return Call(Task.RELICS_INFO, [relic_id], RelicInfo.model_validate)


def list_relics(session_id: str | None) -> Call[list[RelicInfo]]:
    """Every relic, or one session's."""
    return Call(Task.RELICS_LIST, [session_id], _relics)


def stop_relic(relic_id: str) -> Call[RelicInfo]:
    """Stop a relic gracefully."""
    return Call(Task.RELICS_STOP, [relic_id], RelicInfo.model_validate, SLOW_SECONDS)


def remove_relic(relic_id: str) -> Call[dict[str, Any]]:
    """Remove a relic's container."""
    return Call(Task.RELICS_REMOVE, [relic_id], _mapping, SLOW_SECONDS)


def container_stats(container: str) -> Call[ContainerStats]:
    """Stats of one container by container, execution or relic id."""
    return Call(Task.STATS_CONTAINER, [container], ContainerStats.model_validate)


def stats() -> Call[AggregateStats]:
    """Stats of every managed container on every live host."""
    return Call(Task.STATS_ALL, [], AggregateStats.model_validate)


def touch_session(session_id: str, extend_seconds: float) -> Call[dict[str, Any]]:
    """Keep a session alive."""
    return Call(Task.SESSIONS_TOUCH, [session_id, extend_seconds], _mapping)


def cleanup_session(session_id: str, force: bool) -> Call[CleanupReport]:
    """Remove everything a session has."""
    return Call(
        Task.CLEANUP_SESSION, [session_id, force], CleanupReport.model_validate, CLEANUP_SECONDS
    )


def cleanup_networks() -> Call[dict[str, Any]]:
    """Remove managed networks that have no containers."""
    return Call(Task.CLEANUP_NETWORKS, [], _mapping, CLEANUP_SECONDS)


class RunHandle:
    """What both clients' handles of a tool run hold; ``id`` is the execution id.

    ``wait_seconds`` is how long ``result()`` waits by default: the run's
    ``timeout_seconds`` plus the ``client_wait_slack_seconds`` setting.
    """

    def __init__(self, sent: Sent, tool_name: str, session_id: str, wait_seconds: float) -> None:
        self.sent = sent
        self.id: str = sent.async_result.id
        self.tool_name = tool_name
        self.session_id = session_id
        self.wait_seconds = wait_seconds

    def _wait_for(self, timeout: float | None) -> float:
        return self.wait_seconds if timeout is None else timeout

    def _cancelled(self) -> ToolExecutionResult:
        return cancelled_result(self.id, self.tool_name, self.session_id)


def no_result(task_id: str, seconds: float | None) -> OrchestratorTimeout:
    """The error of a wait that ran out: it names the task and says the task goes on."""
    return OrchestratorTimeout(
        f"no result for task {task_id} after {seconds:g} s; the task was not cancelled and "
        "may still run: ask for it later by this id (get_execution, `orchestrator tool show`) "
        "or wait longer with a larger timeout; is a worker running? (`orchestrator doctor` "
        "checks)"
    )


def cancelled_result(execution_id: str, tool_name: str, session_id: str) -> ToolExecutionResult:
    """The result of a run revoked before a worker started it."""
    return ToolExecutionResult(
        execution_id=execution_id,
        tool_name=tool_name,
        session_id=session_id,
        status="cancelled",
        error="cancelled before it started",
    )


def execution_from_meta(
    execution_id: str, meta: Mapping[str, Any]
) -> ToolExecutionResult | ExecutionProgress:
    """A run's result, or its progress, from its Celery task meta (``status``, ``result``)."""
    state = str(meta.get("status", "PENDING"))
    value = meta.get("result")
    if state == "SUCCESS":
        return ToolExecutionResult.model_validate(value)
    if state == "REVOKED":
        return cancelled_result(execution_id, "", "")
    if state == "FAILURE":
        error = f"{type(value).__name__}: {value}"
        return ExecutionProgress(execution_id=execution_id, state=state, error=error)
    info = value if isinstance(value, dict) else {}
    return ExecutionProgress({**info, "execution_id": execution_id, "state": state})
