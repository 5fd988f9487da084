"""The asynchronous client: :class:`AsyncOrchestratorClient`, for asyncio programs.

It has the methods of :class:`~orchestrator.client.sync.OrchestratorClient`, as coroutines,
with the same requests, defaults and errors (both build their calls in
:mod:`orchestrator.client.calls`). Calls run concurrently and never block the event loop:
a task is published from a small thread pool kept for publishing, and a wait holds no
thread (:mod:`orchestrator.client.aio_core`).

Live output is read with ``redis.asyncio`` too; the registry readers used by health checks
(``live_hosts``...) run redis-py's blocking client in the default thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from celery.exceptions import TaskRevokedError

from orchestrator.client import calls
from orchestrator.client import files as file_calls
from orchestrator.client.aio_core import AsyncCore
from orchestrator.client.aio_workspace import AsyncExecHandle, AsyncWorkspace
from orchestrator.client.calls import ExecutionProgress, RunHandle
from orchestrator.client.resend import Sent
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
from orchestrator.state import keys
from orchestrator.state.logs import LiveReader, join_live

__all__ = ["AsyncOrchestratorClient", "AsyncExecutionHandle", "AsyncExecHandle"]


class AsyncExecutionHandle(RunHandle):
    """A tool execution that was enqueued; ``id`` is its execution id.

    ``wait_seconds`` is how long :meth:`result` waits by default: the run's
    ``timeout_seconds`` plus the ``client_wait_slack_seconds`` setting.
    """

    def __init__(
        self,
        client: AsyncCore,
        sent: Sent,
        tool_name: str,
        session_id: str,
        wait_seconds: float,
    ) -> None:
        super().__init__(sent, tool_name, session_id, wait_seconds)
        self.client = client

    async def state(self) -> str:
        """The Celery state: PENDING, STARTED, PULLING, BUILDING, RUNNING, SUCCESS, ..."""
        return str((await self.client._meta(self.id))["status"])

    async def result(self, timeout: float | None = None) -> ToolExecutionResult:
        """Wait for the run to finish and return its result (the loop keeps running).

        Args:
            timeout: seconds to wait; None waits :attr:`wait_seconds`.

        Raises:
            OrchestratorTimeout: no result in time (the run goes on; ask again by ``id``).
            InvalidRequest: the worker refused the request.
        """
        try:
            data = await self.client._wait(self.sent, self._wait_for(timeout))
        except TaskRevokedError:
            return self._cancelled()
        return ToolExecutionResult.model_validate(data)


class AsyncOrchestratorClient(AsyncWorkspace):
    """The methods of :class:`~orchestrator.client.sync.OrchestratorClient`, as coroutines.

    ``async with AsyncOrchestratorClient() as client:`` closes its connections. Timeouts
    work as in the synchronous client: None means the call's finite default. Sending and
    waiting: :mod:`orchestrator.client.aio_core`; commands and files in relics:
    :mod:`orchestrator.client.aio_workspace`. Arguments: those of
    :class:`~orchestrator.client.aio_core.AsyncCore` (``settings``, ``app``, and the
    ``redis.asyncio`` clients ``results`` and ``registry``, made when omitted).
    """

    # -- tools ---------------------------------------------------------------------------

    async def execute_tool(
        self, request: ToolExecutionRequest | dict[str, Any]
    ) -> AsyncExecutionHandle:
        """Enqueue a tool run and return once it is sent; ``handle.id`` is the execution id.

        Raises:
            InvalidRequest: the request does not validate (nothing is sent).
            Forbidden: it has secret parameters and no ``ORCHESTRATOR_SECRET_KEY`` is set.
        """
        req = parse_request(ToolExecutionRequest, request)
        if req.files:  # large files go beside the message
            req = await asyncio.to_thread(file_calls.stash_run_files, req, self.sync._run_stash)
        slack = self.settings.client_wait_slack_seconds
        call = calls.execute_tool(req, self.sync._sealed(req), slack)
        sent = await self._send(call)
        return AsyncExecutionHandle(self, sent, req.tool_name, req.session_id, call.wait_seconds)

    async def run_tool(
        self, request: ToolExecutionRequest | dict[str, Any], timeout: float | None = None
    ) -> ToolExecutionResult:
        """Enqueue a tool run and wait for its result.

        Args:
            request: the run.
            timeout: seconds to wait; None waits the run's ``timeout_seconds`` plus the
                ``client_wait_slack_seconds`` setting.

        Raises:
            OrchestratorTimeout: no result in time; the run goes on.
        """
        return await (await self.execute_tool(request)).result(timeout)

    async def cancel_tool(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a run on any host: ``{"execution_id", "cancelled", "status"}`` (30 s)."""
        return await self._run(calls.cancel_tool(execution_id), timeout)

    async def get_execution(self, execution_id: str) -> ToolExecutionResult | ExecutionProgress:
        """The final result, or an ExecutionProgress while the run is queued or running."""
        return calls.execution_from_meta(execution_id, await self._meta(execution_id))

    async def get_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` of a run (what has been captured so far while it runs)."""
        current = await self.get_execution(execution_id)
        if isinstance(current, ToolExecutionResult):
            return {"stdout": current.stdout, "stderr": current.stderr}
        return await self.live_logs(execution_id)

    async def live_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` published live so far (also while the run goes on)."""
        return join_live(await self.registry.xrange(keys.logs(execution_id)))

    async def has_live_logs(self, execution_id: str) -> bool:
        """True while a run's live output stream is kept (it expires with the results)."""
        return bool(await self.registry.exists(keys.logs(execution_id)))

    async def follow_logs(
        self, execution_id: str, idle_rounds: int | None = None, block_ms: int = 1000
    ) -> AsyncIterator[tuple[str, str]]:
        """Yield ``(stream, text)`` chunks of a run's output as it prints them, until it ends.

        Args:
            execution_id: whose output to follow.
            idle_rounds: stop after this many reads that found nothing (None: until the end).
            block_ms: how long one read waits for new output.
        """
        reader = LiveReader(execution_id)
        idle = 0
        while not reader.ended:
            reply = await self.registry.xread({reader.key: reader.last}, block=block_ms, count=512)
            idle = 0 if reply else idle + 1
            for chunk in reader.feed(reply):
                yield chunk
            if idle_rounds is not None and idle >= max(idle_rounds, 1):
                return

    # -- the registry, read-only (in the default thread pool) -----------------------------

    async def ping_registry(self) -> None:
        """Check that the registry's Redis answers (raises redis-py's errors when not)."""
        await asyncio.to_thread(self.sync.ping_registry)

    async def live_hosts(self) -> list[str]:
        """Docker hosts that have a live worker (a fresh heartbeat), sorted."""
        return await asyncio.to_thread(self.sync.live_hosts)

    async def host_heartbeat(self, host_name: str) -> dict[str, Any] | None:
        """The last heartbeat of a host's worker (``seen_at``, queue...), or None."""
        return await asyncio.to_thread(self.sync.host_heartbeat, host_name)

    async def janitor_last_run(self) -> dict[str, Any] | None:
        """The summary of the janitor's last pass (``at``, ``hosts``...), or None."""
        return await asyncio.to_thread(self.sync.janitor_last_run)

    # -- relics --------------------------------------------------------------------------

    async def start_relic(
        self, request: RelicStartRequest | dict[str, Any], timeout: float | None = None
    ) -> RelicInfo:
        """Start a relic and wait until it is healthy.

        Args:
            request: the relic.
            timeout: seconds to wait; None waits its ``health_timeout_seconds`` plus the
                ``client_wait_slack_seconds`` setting.

        Raises:
            InvalidRequest: the request does not validate (nothing is sent).
            OrchestratorTimeout: not started in time; the start goes on.
        """
        req = parse_request(RelicStartRequest, request)
        slack = self.settings.client_wait_slack_seconds
        return await self._run(calls.start_relic(req, self.sync._sealed(req), slack), timeout)

    async def get_relic(self, relic_id: str, timeout: float | None = None) -> RelicInfo:
        """A relic's current info (status kept true to the engine)."""
        return await self._run(calls.get_relic(relic_id), timeout)

    async def list_relics(
        self, session_id: str | None = None, timeout: float | None = None
    ) -> list[RelicInfo]:
        """Every relic, or those of one session."""
        return await self._run(calls.list_relics(session_id), timeout)

    async def stop_relic(self, relic_id: str, timeout: float | None = None) -> RelicInfo:
        """Stop a relic gracefully (then kill after its grace period); waits 120 s."""
        return await self._run(calls.stop_relic(relic_id), timeout)

    async def remove_relic(self, relic_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Remove a relic's container: ``{"relic_id", "removed"}``; waits 120 s."""
        return await self._run(calls.remove_relic(relic_id), timeout)

    # -- stats, sessions, cleanup -----------------------------------------------------------

    async def container_stats(self, container: str, timeout: float | None = None) -> ContainerStats:
        """Stats of one container by container id, execution id or relic id."""
        return await self._run(calls.container_stats(container), timeout)

    async def stats(self, timeout: float | None = None) -> AggregateStats:
        """Stats of every managed container on every live host."""
        return await self._run(calls.stats(), timeout)

    async def touch_session(
        self, session_id: str, extend_seconds: float = 3600, timeout: float | None = None
    ) -> dict[str, Any]:
        """Keep a session alive: ``{"session_id", "expires_at"}``."""
        return await self._run(calls.touch_session(session_id, extend_seconds), timeout)

    async def cleanup_session(
        self, session_id: str, force: bool = True, timeout: float | None = None
    ) -> CleanupReport:
        """Stop and remove every container, volume and network of a session; waits 300 s."""
        return await self._run(calls.cleanup_session(session_id, force), timeout)

    async def cleanup_networks(self, timeout: float | None = None) -> dict[str, Any]:
        """Remove managed networks that have no containers: ``{"removed", "errors"}`` (300 s)."""
        return await self._run(calls.cleanup_networks(), timeout)
