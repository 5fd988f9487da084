"""A warm pool of tool containers: created and started ahead of time, used once, discarded.

For each pool the operator configures (``ORCHESTRATOR_POOL``, a JSON list of
:class:`PoolSpec`), every host keeps ``size`` idle containers of that image and those
limits, with no network and the usual sandbox. A run whose request matches a pool
(same image and limits, ``network_mode="none"``, no volumes, no build) takes one
(``SPOP`` in Redis, so two runs never share one), records it in the execution's
registry entry (a redelivery then never runs the tool again: at most once), runs the
tool in it with ``exec`` and its parameters as environment, collects its output and
exit code like a cold run, then discards the container; the pool refills in the
background. Pool containers are labelled ``orchestrator.kind=pool`` with a
deadline, so the janitor reaps any that are left behind.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from orchestrator.core.specs import IDLE_SCRIPT, pool_spec
from orchestrator.errors import OrchestratorError
from orchestrator.models import PoolSpec, ToolExecutionRequest
from orchestrator.state import keys
from orchestrator.state.registry import text

if TYPE_CHECKING:
    from orchestrator.worker.runtime import Runtime

__all__ = ["PoolSpec", "WarmPool", "IDLE_SCRIPT"]

log = logging.getLogger(__name__)


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

    def take(self, request: ToolExecutionRequest) -> str | None:
        """A running idle container for ``request``, removed from the pool.

        Returns:
            Its id; None when no pool matches or the pool is empty.
        """
        spec = self.spec_for(request)
        if spec is None:
            return None
        try:
            raw = self.rt.redis.spop(self._key(spec))
            # No inspect on the hot path: a container that died since it was pooled makes
            # the exec fail, and the run falls back to a cold container.
            return text(raw)
        finally:
            self.refill_soon()

    def discard(self, container_id: str) -> None:
        """Remove a used (or broken) pool container, in the background."""

        def remove() -> None:
            try:
                self.rt.engine.remove_container(container_id)
            except OrchestratorError:
                log.warning("could not discard pool container %s; the janitor will", container_id)
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
        engine = self.rt.engine
        suffix = uuid.uuid4().hex[:10]
        made = pool_spec(spec, settings=self.rt.settings, now=time.time(), suffix=suffix)
        container = engine.create_container(made)
        engine.start_container(container.id)
        return container.id

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
                    removed += self.rt.engine.remove_container(text(raw) or "")
                except OrchestratorError:
                    continue
        return removed
