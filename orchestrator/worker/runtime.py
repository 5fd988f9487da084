"""A worker's runtime: its settings, clients and housekeeping thread.

One :class:`Runtime` per worker process holds the Redis and Docker clients,
the lease keeper and the registries, and runs one daemon thread that
heartbeats the host, renews leases and re-enqueues executions whose worker died.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.engine.base import Engine
from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.errors import HostUnavailable, WrongHost
from orchestrator.protocol import RELICS_QUEUE, TOOLS_QUEUE, Task, host_queue
from orchestrator.settings import Settings
from orchestrator.state.leases import LeaseKeeper
from orchestrator.state.registry import ExecutionEntry, ExecutionRegistry, HostRegistry
from orchestrator.worker.images import RecentImages
from orchestrator.worker.pool import WarmPool

__all__ = ["Runtime", "Enqueue"]

log = logging.getLogger(__name__)

# enqueue(work_id, request_json, queue, task=name): send the task again under the same id
# (``task`` defaults to orchestrator.tools.execute; relic starts are in flight work too).
Enqueue = Callable[..., None]
TOOL_TASK = Task.TOOLS_EXECUTE.value


class Runtime:
    """Everything a task needs on this worker, created once per process.

    Args:
        settings: the operator's settings.
        redis: a redis-py client (fakeredis in unit tests).
        engine: the Docker engine (a FakeEngine in unit tests), or None to connect
            lazily from ``DOCKER_HOST`` & co.
        enqueue: how to send an execution again (given by the tasks layer).
    """

    def __init__(
        self,
        settings: Settings,
        redis: Any,
        engine: Engine | None = None,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self._engine = engine
        self._engine_lock = threading.Lock()
        self.enqueue = enqueue
        self.leases = LeaseKeeper(redis, settings.lease_seconds)
        self.executions = ExecutionRegistry(redis, settings.result_ttl_seconds)
        self.hosts = HostRegistry(redis, settings.host_ttl_seconds)
        self.pool = WarmPool(self)
        #: images this worker created containers from lately (their check is skipped)
        self.images = RecentImages()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def host_name(self) -> str:
        """This worker's Docker host name."""
        return self.settings.host_name

    def require_local(self, owner: str, what: str, hint: str = "") -> None:
        """Make sure ``what``, which lives on host ``owner``, is on this host.

        An empty ``owner`` means "anywhere" and passes.

        Raises:
            WrongHost: a live worker serves ``owner`` (the task forwards itself there).
            HostUnavailable: ``owner`` has no live worker, so a forwarded task would wait on
                its queue for nothing.
        """
        if not owner or owner == self.host_name:
            return
        if not self.hosts.alive(owner):
            message = f"{what} lives on host {owner!r}, which has no live worker"
            raise HostUnavailable(f"{message}; {hint}" if hint else message)
        raise WrongHost(f"{what} lives on host {owner}", owner=owner)

    @property
    def engine(self) -> Engine:
        """This host's Docker engine, connecting on first use.

        Raises:
            DockerUnavailable: the engine does not answer yet.
        """
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = DockerEngine.from_env(
                        timeout_seconds=self.settings.docker_timeout_seconds,
                        # A cold run holds up to four connections at once (its wait,
                        # two log streams, its stats stream).
                        max_pool_size=4 * self.settings.worker_concurrency + 8,
                    )
        return self._engine

    # -- housekeeping -------------------------------------------------------------------

    def start_housekeeping(self) -> None:
        """Start the heartbeat / lease renewal / reaper thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        self._thread.start()

    def stop_housekeeping(self) -> None:
        """Stop the housekeeping thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.pool.drain()
        except Exception:  # noqa: BLE001 - the janitor reaps idle pool containers anyway
            log.warning("could not drain the warm pool of %s", self.host_name)
        try:
            self.hosts.leave(self.host_name)
        except Exception:  # noqa: BLE001 - Redis may be gone at shutdown; the key expires anyway
            log.debug("could not withdraw the heartbeat of %s", self.host_name)

    def _housekeeping(self) -> None:
        period = min(
            self.settings.heartbeat_seconds,
            self.settings.lease_seconds / 3,
            self.settings.reaper_interval_seconds,
        )
        next_reap = 0.0
        while not self._stop.is_set():
            try:
                self.heartbeat()
                self.leases.renew_all()
                self.pool.refill_soon()
                if time.monotonic() >= next_reap:
                    self.reap_expired()
                    next_reap = time.monotonic() + self.settings.reaper_interval_seconds
            except Exception:  # noqa: BLE001 - housekeeping must survive Redis outages
                log.exception("housekeeping round failed; retrying")
            self._stop.wait(period)

    def heartbeat(self) -> None:
        """Tell the registry this host has a live worker."""
        self.hosts.beat(
            self.host_name,
            {"queue": self.settings.host_queue, "concurrency": self.settings.worker_concurrency},
        )

    def reap_expired(self) -> list[str]:
        """Re-enqueue in-flight executions whose lease expired and whose worker died.

        Returns:
            The ids that were re-enqueued.
        """
        requeued = []
        for execution_id in self.executions.inflight():
            if not self.leases.abandoned(execution_id):  # held, or its worker lives
                continue
            entry = self.executions.get(execution_id)
            if not entry.known or entry.finished:
                self.executions.forget(execution_id)
                continue
            if self._requeue(execution_id, entry):
                requeued.append(execution_id)
        return requeued

    def _requeue(self, execution_id: str, entry: ExecutionEntry) -> bool:
        if self.enqueue is None or not entry.request:
            return False
        hold = self.settings.lease_seconds * 3
        if not self.executions.mark_requeued(execution_id, hold):
            return False
        request = json.loads(entry.request)
        task = entry.task or TOOL_TASK
        owner = entry.host
        if owner and self.hosts.alive(owner):
            queue = host_queue(owner)
        else:  # session work then fails there with HostUnavailable
            queue = TOOLS_QUEUE if task == TOOL_TASK else RELICS_QUEUE
        log.warning("%s %s lost its worker; re-enqueued on %s", task, execution_id, queue)
        if task == TOOL_TASK:
            self.enqueue(execution_id, request, queue)
        else:
            self.enqueue(execution_id, request, queue, task=task)
        return True
