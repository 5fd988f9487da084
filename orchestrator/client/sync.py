"""The public Python API: :class:`OrchestratorClient` and :class:`AsyncOrchestratorClient`.

Clients enqueue tasks by name over Celery; they import no worker code and no
docker. Requests are validated here first, so bad input fails at once with
:class:`~orchestrator.errors.InvalidRequest` and nothing is sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from orchestrator import protocol
from orchestrator.client.config import client_config
from orchestrator.client.resend import LostMessages, Sent
from orchestrator.core import redaction, secrets
from orchestrator.errors import OrchestratorTimeout
from orchestrator.models import (
    AggregateStats,
    CleanupReport,
    ContainerStats,
    RelicInfo,
    RelicStartRequest,
    ToolExecutionRequest,
    ToolExecutionResult,
    parse_request,
)
from orchestrator.protocol import ROUTED_QUEUES, Task
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.logs import follow_live, read_live
from orchestrator.state.redis_conn import broker_probe, redis_client
from orchestrator.state.registry import HostRegistry
from orchestrator.state.routing import queue_for

__all__ = ["OrchestratorClient", "AsyncOrchestratorClient", "ExecutionHandle", "ExecutionProgress"]

T = TypeVar("T")
FINAL_CELERY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class ExecutionProgress(dict[str, Any]):
    """The state of an execution that has not finished: ``{"execution_id", "state", ...}``."""


#: Longest wait on the result backend's notification before the stored result is read again.
RESULT_RECHECK_SECONDS = 2.0


def _unwrap(
    async_result: AsyncResult,
    timeout: float | None,
    between_slices: Callable[[], object] | None = None,
) -> Any:
    """Wait for a task's result, ``timeout`` seconds at most (``None``: for ever).

    Celery's Redis backend announces results over pub/sub. A result published while the
    client's pub/sub connection is being re-established (Redis restarted) is never announced
    again, so the wait is cut into slices and each new slice starts by reading the stored
    result itself: a missed announcement costs at most one slice instead of the whole wait.
    ``between_slices`` runs after each slice that ended without a result.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = RESULT_RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
        try:
            return async_result.get(
                timeout=max(0.0, min(left, RESULT_RECHECK_SECONDS)),
                propagate=True,
                disable_sync_subtasks=False,
            )
        except CeleryTimeout as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise OrchestratorTimeout(
                    f"no result for task {async_result.id} after {timeout} s; is a worker "
                    "running? (`orchestrator doctor` checks)"
                ) from exc
            if between_slices is not None:
                between_slices()


class ExecutionHandle:
    """A tool execution that was enqueued; ``id`` is its execution id."""

    def __init__(
        self, client: OrchestratorClient, sent: Sent, tool_name: str, session_id: str
    ) -> None:
        self.client = client
        self.sent = sent
        self.async_result = sent.async_result
        self.id: str = sent.async_result.id
        self.tool_name = tool_name
        self.session_id = session_id

    @property
    def state(self) -> str:
        """The Celery state: PENDING, STARTED, PULLING, BUILDING, RUNNING, SUCCESS, ..."""
        return str(self.async_result.state)

    def result(self, timeout: float | None = None) -> ToolExecutionResult:
        """Wait for the run to finish and return its result.

        Raises:
            OrchestratorTimeout: no result within ``timeout`` seconds.
            InvalidRequest: the worker refused the request.
        """
        try:
            data = self.client._wait(self.sent, timeout)
        except TaskRevokedError:
            return self.client._cancelled_result(self.id, self.tool_name, self.session_id)
        return ToolExecutionResult.model_validate(data)


class OrchestratorClient:
    """Synchronous client.

    Args:
        settings: connections; read from ``ORCHESTRATOR_*`` variables when omitted.
        app: an existing Celery app to send through (its configuration is used as is).
    """

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or Settings.from_env()
        if app is None:
            app = Celery("orchestrator-client", set_as_current=False)
            app.conf.update(client_config(self.settings))
        self.app = app
        key = self.settings.secret_key
        self._keyring = secrets.keyring(key.get_secret_value() if key is not None else None)
        self._redis: Any = None
        self._lost: LostMessages | None = None
        if self.settings.broker_url.startswith(("redis://", "rediss://")):
            self._lost = LostMessages(app, broker_probe(self.settings.broker_url))

    @property
    def redis(self) -> Any:
        """The registry's Redis client (for routing and live logs)."""
        if self._redis is None:
            self._redis = redis_client(self.settings)
        return self._redis

    def _send(self, name: str, args: list[Any], queue: str | None = None, **options: Any) -> Sent:
        epoch = self._lost.epoch() if self._lost is not None else ""
        async_result = self.app.send_task(str(name), args=args, queue=queue, **options)
        return Sent(
            name=name,
            args=args,
            options={**options, "queue": queue},
            async_result=async_result,
            queues=(queue,) if queue else ROUTED_QUEUES,
            epoch=epoch,
        )

    def _sealed(self, req: ToolExecutionRequest | RelicStartRequest) -> dict[str, Any]:
        """The request as sent: JSON with every secret value encrypted.

        Raises:
            Forbidden: the request has secret values and no ``ORCHESTRATOR_SECRET_KEY`` is
                set (unless ``ORCHESTRATOR_DEV_ALLOW_PLAINTEXT_SECRETS``): nothing is sent.
        """
        return secrets.seal_payload(
            req.model_dump(mode="json"), self._keyring, self.settings.dev_allow_plaintext_secrets
        )

    def _send_request(self, name: str, payload: dict[str, Any], queue: str | None) -> Sent:
        """Send a sealed request with an argsrepr (what Flower shows) masked and bounded."""
        argsrepr, _ = redaction.call_repr([payload], {})
        return self._send(name, [payload], queue=queue, argsrepr=argsrepr)

    def _wait(self, sent: Sent, timeout: float | None) -> Any:
        """Wait for a sent task's result, sending it again if a restarted broker lost it."""
        lost = self._lost
        check = None if lost is None else functools.partial(lost.check, sent)
        return _unwrap(sent.async_result, timeout, check)

    def _call(
        self, name: str, args: list[Any], timeout: float | None, queue: str | None = None
    ) -> Any:
        return self._wait(self._send(name, args, queue=queue), timeout)

    # -- tools ---------------------------------------------------------------------------

    def execute_tool(self, request: ToolExecutionRequest | dict[str, Any]) -> ExecutionHandle:
        """Enqueue a tool run and return at once; ``handle.id`` is the execution id.

        Secret parameters are encrypted with ``ORCHESTRATOR_SECRET_KEY`` before they leave.

        Raises:
            InvalidRequest: the request does not validate.
            Forbidden: it has secret parameters and no key is set (see :meth:`_sealed`).
        """
        req = parse_request(ToolExecutionRequest, request)
        payload = self._sealed(req)
        queue = protocol.TOOLS_QUEUE
        if req.network_mode == "session":
            queue = queue_for(self.redis, req.session_id, protocol.TOOLS_QUEUE)
        sent = self._send_request(Task.TOOLS_EXECUTE, payload, queue)
        return ExecutionHandle(self, sent, req.tool_name, req.session_id)

    def run_tool(
        self, request: ToolExecutionRequest | dict[str, Any], timeout: float | None = None
    ) -> ToolExecutionResult:
        """Enqueue a tool run and wait for its result (``timeout`` in seconds)."""
        return self.execute_tool(request).result(timeout=timeout)

    def cancel_tool(self, execution_id: str, timeout: float | None = 30) -> dict[str, Any]:
        """Cancel a run on any host: ``{"execution_id", "cancelled", "status"}``."""
        return dict(self._call(Task.TOOLS_CANCEL, [execution_id], timeout))

    def get_execution(self, execution_id: str) -> ToolExecutionResult | ExecutionProgress:
        """The final result, or an ExecutionProgress while the run is queued or running."""
        async_result = AsyncResult(execution_id, app=self.app)
        state = async_result.state
        if state == "SUCCESS":
            return ToolExecutionResult.model_validate(async_result.result)
        if state == "REVOKED":
            return self._cancelled_result(execution_id, "", "")
        if state == "FAILURE":
            error = async_result.result
            return ExecutionProgress(
                execution_id=execution_id, state=state, error=f"{type(error).__name__}: {error}"
            )
        info = async_result.info if isinstance(async_result.info, dict) else {}
        return ExecutionProgress({**info, "execution_id": execution_id, "state": state})

    def get_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` of a run (what has been captured so far while it runs)."""
        current = self.get_execution(execution_id)
        if isinstance(current, ToolExecutionResult):
            return {"stdout": current.stdout, "stderr": current.stderr}
        return read_live(self.redis, execution_id)

    def follow_logs(
        self, execution_id: str, idle_rounds: int | None = None, block_ms: int = 1000
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(stream, text)`` chunks of a run's output as it prints them, until it ends.

        Args:
            execution_id: whose output to follow.
            idle_rounds: stop after this many reads that found nothing (None: until the end).
            block_ms: how long one read waits for new output.
        """
        yield from follow_live(self.redis, execution_id, block_ms=block_ms, idle_rounds=idle_rounds)

    def live_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` published live so far (also while the run goes on)."""
        return read_live(self.redis, execution_id)

    def has_live_logs(self, execution_id: str) -> bool:
        """True while a run's live output stream is kept (it expires with the results)."""
        return bool(self.redis.exists(keys.logs(execution_id)))

    # -- the registry, read-only: what the CLI's health checks show --------------------

    def ping_registry(self) -> None:
        """Check that the registry's Redis answers (raises redis-py's errors when not)."""
        self.redis.ping()

    def live_hosts(self) -> list[str]:
        """Docker hosts that have a live worker (a fresh heartbeat), sorted."""
        return HostRegistry(self.redis, self.settings.host_ttl_seconds).live_hosts()

    def host_heartbeat(self, host_name: str) -> dict[str, Any] | None:
        """The last heartbeat of a host's worker (``seen_at``, queue...), or None."""
        return HostRegistry(self.redis, self.settings.host_ttl_seconds).info(host_name)

    def janitor_last_run(self) -> dict[str, Any] | None:
        """The summary of the janitor's last pass (``at``, ``hosts``...), or None.

        Raises:
            ValueError: the stored summary is not readable JSON.
        """
        raw = self.redis.get(keys.JANITOR_LAST_RUN)
        if raw is None:
            return None
        summary = json.loads(raw)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary

    def _cancelled_result(
        self, execution_id: str, tool_name: str, session_id: str
    ) -> ToolExecutionResult:
        return ToolExecutionResult(
            execution_id=execution_id,
            tool_name=tool_name,
            session_id=session_id,
            status="cancelled",
            error="cancelled before it started",
        )

    # -- relics --------------------------------------------------------------------------

    def start_relic(
        self, request: RelicStartRequest | dict[str, Any], timeout: float | None = None
    ) -> RelicInfo:
        """Start a relic and wait until it is healthy.

        Secret parameters are encrypted with ``ORCHESTRATOR_SECRET_KEY`` before they leave.

        Raises:
            InvalidRequest: the request does not validate.
            Forbidden: it has secret parameters and no key is set (see :meth:`_sealed`).
        """
        req = parse_request(RelicStartRequest, request)
        payload = self._sealed(req)
        queue = queue_for(self.redis, req.session_id, protocol.RELICS_QUEUE)
        data = self._wait(self._send_request(Task.RELICS_START, payload, queue), timeout)
        return RelicInfo.model_validate(data)

    def get_relic(self, relic_id: str, timeout: float | None = 60) -> RelicInfo:
        """A relic's current info (status kept true to the engine)."""
        return RelicInfo.model_validate(self._call(Task.RELICS_INFO, [relic_id], timeout))

    def list_relics(
        self, session_id: str | None = None, timeout: float | None = 60
    ) -> list[RelicInfo]:
        """Every relic, or those of one session."""
        data = self._call(Task.RELICS_LIST, [session_id], timeout)
        return [RelicInfo.model_validate(item) for item in data]

    def stop_relic(self, relic_id: str, timeout: float | None = 120) -> RelicInfo:
        """Stop a relic gracefully (then kill after its grace period)."""
        return RelicInfo.model_validate(self._call(Task.RELICS_STOP, [relic_id], timeout))

    def remove_relic(self, relic_id: str, timeout: float | None = 120) -> dict[str, Any]:
        """Remove a relic's container: ``{"relic_id", "removed"}``."""
        return dict(self._call(Task.RELICS_REMOVE, [relic_id], timeout))

    # -- stats, sessions, cleanup -----------------------------------------------------------

    def container_stats(self, container: str, timeout: float | None = 60) -> ContainerStats:
        """Stats of one container by container id, execution id or relic id."""
        data = self._call(Task.STATS_CONTAINER, [container], timeout)
        return ContainerStats.model_validate(data)

    def stats(self, timeout: float | None = 60) -> AggregateStats:
        """Stats of every managed container on every live host."""
        return AggregateStats.model_validate(self._call(Task.STATS_ALL, [], timeout))

    def touch_session(
        self, session_id: str, extend_seconds: float = 3600, timeout: float | None = 60
    ) -> dict[str, Any]:
        """Keep a session alive: ``{"session_id", "expires_at"}``."""
        return dict(self._call(Task.SESSIONS_TOUCH, [session_id, extend_seconds], timeout))

    def cleanup_session(
        self, session_id: str, force: bool = True, timeout: float | None = 300
    ) -> CleanupReport:
        """Stop and remove every container, volume and network of a session."""
        data = self._call(Task.CLEANUP_SESSION, [session_id, force], timeout)
        return CleanupReport.model_validate(data)

    def cleanup_networks(self, timeout: float | None = 300) -> dict[str, Any]:
        """Remove managed networks that have no containers: ``{"removed", "errors"}``."""
        return dict(self._call(Task.CLEANUP_NETWORKS, [], timeout))

    def close(self) -> None:
        """Release connections."""
        if self._redis is not None:
            self._redis.close()
        if self._lost is not None:
            self._lost.broker.close()
        self.app.close()


def _in_thread(method: Callable[..., T]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapper(self: AsyncOrchestratorClient, *args: Any, **kwargs: Any) -> T:
        bound = getattr(self.sync, method.__name__)
        return await asyncio.to_thread(bound, *args, **kwargs)

    return wrapper


class AsyncOrchestratorClient:
    """The same methods as :class:`OrchestratorClient`, as coroutines.

    Celery's result API is blocking, so each call runs in a worker thread.
    """

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.sync = OrchestratorClient(settings, app)

    execute_tool = _in_thread(OrchestratorClient.execute_tool)
    run_tool = _in_thread(OrchestratorClient.run_tool)
    cancel_tool = _in_thread(OrchestratorClient.cancel_tool)
    get_execution = _in_thread(OrchestratorClient.get_execution)
    get_logs = _in_thread(OrchestratorClient.get_logs)
    start_relic = _in_thread(OrchestratorClient.start_relic)
    get_relic = _in_thread(OrchestratorClient.get_relic)
    list_relics = _in_thread(OrchestratorClient.list_relics)
    stop_relic = _in_thread(OrchestratorClient.stop_relic)
    remove_relic = _in_thread(OrchestratorClient.remove_relic)
    container_stats = _in_thread(OrchestratorClient.container_stats)
    stats = _in_thread(OrchestratorClient.stats)
    touch_session = _in_thread(OrchestratorClient.touch_session)
    cleanup_session = _in_thread(OrchestratorClient.cleanup_session)
    cleanup_networks = _in_thread(OrchestratorClient.cleanup_networks)

    async def follow_logs(self, execution_id: str) -> AsyncIterator[tuple[str, str]]:
        """Async iterator over ``(stream, text)`` chunks of a run's output, live."""
        chunks = self.sync.follow_logs(execution_id)
        done = object()
        while True:
            item = await asyncio.to_thread(next, chunks, done)
            if item is done:
                return
            yield item  # type: ignore[misc]

    async def close(self) -> None:
        """Release connections."""
        await asyncio.to_thread(self.sync.close)
