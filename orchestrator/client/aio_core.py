"""The core of the asynchronous client: sending and waiting, concurrently.

Calls run concurrently and never block the event loop:

- **Sending** is a kombu publish (about a millisecond). It runs in a small thread pool kept
  for publishing alone (:data:`PUBLISH_THREADS`), so a call never waits behind another
  call's wait, and a broker that is slow to answer does not stall the loop.
- **Waiting** holds no thread: the result backend's key (``celery-task-meta-<id>``) is read
  with ``redis.asyncio``, first after :data:`FIRST_POLL_SECONDS`, then less and less often,
  at most :data:`MAX_POLL_SECONDS` apart. Any number of calls wait at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
from celery import Celery, states
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.client.backend import quiet_backend_url
from orchestrator.client.calls import Call, no_result
from orchestrator.client.config import client_config
from orchestrator.client.relic_exec import relic_queue
from orchestrator.client.resend import CHECK_EVERY_SECONDS, Sent
from orchestrator.client.sync import OrchestratorClient
from orchestrator.errors import InvalidRequest, OrchestratorError
from orchestrator.settings import Settings
from orchestrator.state.redis_conn import RETRY_SECONDS

__all__ = ["AsyncCore", "PUBLISH_THREADS", "FIRST_POLL_SECONDS", "MAX_POLL_SECONDS"]

T = TypeVar("T")

#: Threads that publish tasks (publishing only: waits hold no thread).
PUBLISH_THREADS = 4
#: The first read of a result comes this long after the send; each next one 1.5 times later.
FIRST_POLL_SECONDS = 0.02
#: Longest pause between two reads of a result.
MAX_POLL_SECONDS = 0.5
POLL_GROWTH = 1.5


def _outcome(task_id: str, meta: Mapping[str, Any]) -> Any:
    """A finished task's return value; its error raised (as ``AsyncResult.get`` does)."""
    value = meta.get("result")
    if meta.get("status") == states.SUCCESS:
        return value
    if isinstance(value, BaseException):
        raise value
    raise OrchestratorError(f"task {task_id} ended {meta.get('status')}: {value}")


def _results_client(url: str) -> Any:
    """A ``redis.asyncio`` client of the result backend that rides out a Redis restart."""
    if not url.startswith(("redis://", "rediss://")):
        raise InvalidRequest(
            f"ORCHESTRATOR_RESULT_BACKEND {url.split('://')[0]}:// is not Redis: the async "
            "client reads results from a Redis result backend"
        )
    return async_redis(url)


def async_redis(url: str) -> Any:
    """A ``redis.asyncio`` client that rides out a Redis restart (as the registry's does)."""
    return aioredis.Redis.from_url(
        url,
        health_check_interval=10,
        socket_keepalive=True,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.025), RETRY_SECONDS + 5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
    )


class AsyncCore:
    """Connections, sending and waiting of the async client (its base class).

    Args:
        settings: connections; read from ``ORCHESTRATOR_*`` variables when omitted.
        app: an existing Celery app to send through (its configuration is used as is; its
            result backend should not subscribe at each send, as
            :class:`~orchestrator.client.backend.QuietRedisBackend` does not).
        results: a ``redis.asyncio`` client of the result backend (made from the settings
            when omitted).
        registry: a ``redis.asyncio`` client of the registry (live logs), likewise.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        app: Celery | None = None,
        results: Any = None,
        registry: Any = None,
    ) -> None:
        settings = settings or Settings.from_env()
        owns_app = app is None
        if app is None:
            app = Celery("orchestrator-async-client", set_as_current=False)
            app.conf.update(client_config(settings))
            app.conf.result_backend = quiet_backend_url(settings.result_backend)
        self.sync = OrchestratorClient(settings, app)
        self.sync._owns_app = owns_app
        self.settings = settings
        self._results = results
        self._registry = registry
        self._publisher = ThreadPoolExecutor(PUBLISH_THREADS, "orchestrator-publish")
        self._closed = False

    @property
    def results(self) -> Any:
        """The ``redis.asyncio`` client the results are read with."""
        if self._results is None:
            self._results = _results_client(self.settings.result_backend)
        return self._results

    @property
    def registry(self) -> Any:
        """The ``redis.asyncio`` client of the registry (live output of runs)."""
        if self._registry is None:
            self._registry = async_redis(self.settings.registry_url)
        return self._registry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sending and waiting -----------------------------------------------------------------

    async def _publish(self, work: Callable[[], T]) -> T:
        """Run ``work`` (a send, a lookup before it) in a publishing thread."""
        if self._closed:
            raise RuntimeError("this AsyncOrchestratorClient is closed: make a new one")
        return await asyncio.get_running_loop().run_in_executor(self._publisher, work)

    async def _send(self, call: Call[Any]) -> Sent:
        return await self._publish(lambda: self.sync._send_call(call))

    async def _meta(self, task_id: str) -> dict[str, Any]:
        """The task's Celery meta (``status``, ``result``...), decoded as Celery does."""
        backend = self.sync.app.backend
        raw = await self.results.get(backend.get_key_for_task(task_id))
        if raw is None:
            return {"status": states.PENDING, "result": None}
        return dict(backend.decode_result(raw))

    async def _resend_if_lost(self, sent: Sent) -> None:
        """Send ``sent`` again if a restarted Redis broker lost it (checked now and then)."""
        lost = self.sync._lost
        if lost is not None and time.monotonic() - sent.checked_at >= CHECK_EVERY_SECONDS:
            await self._publish(lambda: lost.check(sent))

    async def _wait(self, sent: Sent, timeout: float) -> Any:
        """Wait up to ``timeout`` seconds for a sent task's result, without a thread."""
        task_id = sent.async_result.id
        deadline = time.monotonic() + timeout
        pause = FIRST_POLL_SECONDS
        while True:
            meta = await self._meta(task_id)
            if meta["status"] in states.READY_STATES:
                return _outcome(task_id, meta)
            left = deadline - time.monotonic()
            if left <= 0:
                raise no_result(task_id, timeout)
            await self._resend_if_lost(sent)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * POLL_GROWTH, MAX_POLL_SECONDS)

    async def _run(self, call: Call[T], timeout: float | None) -> T:
        sent = await self._send(call)
        return call.decode(await self._wait(sent, call.wait(timeout)))

    async def _send_built(
        self, relic_id: str, build: Callable[[str], Call[T]]
    ) -> tuple[Call[T], Sent]:
        """Send the call ``build(queue)`` makes for the queue of the relic's host."""

        def send() -> tuple[Call[T], Sent]:
            call = build(relic_queue(self.sync.redis, relic_id))
            return call, self.sync._send_call(call)

        return await self._publish(send)

    async def close(self) -> None:
        """Close the connections and stop the publishing threads (once; later calls pass)."""
        if self._closed:
            return
        for connection in (self._results, self._registry):
            if connection is not None:
                await connection.aclose()
        # In a publishing thread: the result backend Celery gave that thread is closed too.
        await self._publish(self.sync.close)
        self._closed = True
        self._publisher.shutdown(wait=False)
