"""A warm pool of tool containers: created and started ahead of time, used once, discarded.

For each pool the operator configures (``ORCHESTRATOR_POOL``, a JSON list of
:class:`PoolSpec`), every host keeps ``size`` idle containers of that image and those
limits, with no network and the usual sandbox. A run whose request matches a pool
(same image and limits, ``network_mode="none"``, no volumes, no build) takes one
(``SPOP`` in Redis, so two runs never share one), renames it after its execution,
runs the tool in it with ``exec`` and its parameters as environment, collects its
output and exit code like a cold run, then discards the container; the pool refills
in the background. Pool containers are labelled ``orchestrator.kind=pool`` with a
deadline, so the janitor reaps any that are left behind.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from orchestrator.core.specs import labels, limit_options, sandbox_options
from orchestrator.engine import containers
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import OrchestratorError
from orchestrator.models import PoolSpec, ToolExecutionRequest
from orchestrator.state import keys
from orchestrator.state.registry import text

if TYPE_CHECKING:
    from orchestrator.worker.runtime import Runtime

__all__ = ["PoolSpec", "WarmPool", "IDLE_SCRIPT"]

log = logging.getLogger(__name__)
# Keeps a pooled container alive and idle until it is used; exits at once on SIGTERM.
IDLE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


class WarmPool:
    """The pools of one host: taking a container, and refilling in the background."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._refilling = threading.Lock()
        self._discards: set[threading.Thread] = set()
        self._discards_lock = threading.Lock()

    @property
    def specs(self) -> list[PoolSpec]:
        """The pools the operator configured."""
        return list(self.rt.settings.pool)

    def _key(self, spec: PoolSpec) -> str:
        return keys.pool(self.rt.host_name, spec.key)

    def spec_for(self, request: ToolExecutionRequest) -> PoolSpec | None:
        """The pool a request can use, if any."""
        default_pids = self.rt.settings.default_pids_limit
        return next((s for s in self.specs if s.matches(request, default_pids)), None)

    def take(self, request: ToolExecutionRequest) -> Any | None:
        """A running idle container for ``request``, removed from the pool; None if empty."""
        spec = self.spec_for(request)
        if spec is None:
            return None
        try:
            raw = self.rt.redis.spop(self._key(spec))
            if raw is None:
                return None
            # No inspect on the hot path: a container that died since it was pooled makes
            # the exec fail, and the run falls back to a cold container.
            return self.rt.docker.containers.prepare_model({"Id": text(raw), "Name": "pooled"})
        finally:
            self.refill_soon()

    def discard(self, container: Any) -> None:
        """Remove a used (or broken) pool container, in the background."""

        def remove() -> None:
            try:
                containers.remove(self.rt.docker, container.id)
            except OrchestratorError:
                log.warning("could not discard pool container %s; the janitor will", container.id)
            finally:
                with self._discards_lock:
                    self._discards.discard(threading.current_thread())

        thread = threading.Thread(target=remove, name="pool-discard", daemon=True)
        with self._discards_lock:
            self._discards.add(thread)
        thread.start()

    def refill_soon(self) -> None:
        """Top the pools up on a background thread (one refill at a time)."""
        if not self.specs or self._refilling.locked():
            return
        threading.Thread(target=self.refill, name="pool-refill", daemon=True).start()

    def refill(self) -> int:
        """Create and start containers until every pool has its size; returns how many."""
        if not self._refilling.acquire(blocking=False):
            return 0
        made = 0
        try:
            for spec in self.specs:
                while self.rt.redis.scard(self._key(spec)) < spec.size:
                    container_id = self._make(spec)
                    self.rt.redis.sadd(self._key(spec), container_id)
                    made += 1
        except OrchestratorError:
            log.exception("refilling the warm pool failed; retrying later")
        finally:
            self._refilling.release()
        return made

    def _make(self, spec: PoolSpec) -> str:
        settings = self.rt.settings
        limits = spec.limits(settings.default_pids_limit)
        config = {
            "image": spec.image,
            "entrypoint": ["sh", "-c", IDLE_SCRIPT],
            "command": [],
            "name": f"orch-pool-{spec.key}-{uuid.uuid4().hex[:10]}",
            "labels": labels(
                "pool",
                "",
                time.time() + spec.max_age_seconds,
                settings.host_name,
                pool=spec.key,
            ),
            "network_mode": "none",
            "detach": True,
            **limit_options(limits),
            **sandbox_options(settings),
        }
        container = containers.create(self.rt.docker, config)
        with docker_errors(f"start pool container {container.name}"):
            container.start()
        return str(container.id)

    def drain(self, wait_seconds: float = 30) -> int:
        """At shutdown: finish pending discards and remove every idle pool container of
        this host; returns how many idle ones were removed."""
        with self._discards_lock:
            pending = list(self._discards)
        for thread in pending:
            thread.join(wait_seconds)
        removed = 0
        for spec in self.specs:
            while (raw := self.rt.redis.spop(self._key(spec))) is not None:
                try:
                    removed += containers.remove(self.rt.docker, text(raw) or "")
                except OrchestratorError:
                    continue
        return removed
