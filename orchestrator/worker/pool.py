"""Warm pools of tool containers: created and started ahead of time, used once, discarded.

A pool is an image and a set of limits on one host; its containers have no network and
the usual sandbox. A run that could use one (same image and limits,
``network_mode="none"``, no volumes, no build, its container removed afterwards) takes an
idle container (``SPOP`` in Redis, so two runs never share one), records it in the
execution's registry entry (a redelivery then never runs the tool again: at most once),
runs the tool in it with ``exec`` and its parameters as environment, collects its output
and exit code like a cold run, then discards the container. Pool containers are labelled
``orchestrator.kind=pool`` with a deadline, so the janitor reaps any left behind.

Sizes come from demand (:mod:`orchestrator.core.pool_policy`): every run that could use
a pool, hit or miss, is recorded with its time in Redis (in the same round trip as the
``SPOP``), and the pool is kept as large as the largest recent burst, within the host's
``pool_memory_mb`` budget, and shrinks to nothing when its demand stops. A pool given in
``ORCHESTRATOR_POOL`` keeps at least its ``size``. The engine work (making, removing) runs
on a background thread behind the pooled runs in progress (:mod:`.pool_refill`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from orchestrator.core.pool_policy import PolicyConfig, PoolDemand, allocate, wanted_size
from orchestrator.core.specs import pool_spec
from orchestrator.errors import OrchestratorError
from orchestrator.models import PoolSpec, ToolExecutionRequest
from orchestrator.protocol import Kind, label_filter
from orchestrator.state import keys
from orchestrator.state.registry import text
from orchestrator.worker.pool_refill import Maintainer, RunGate

if TYPE_CHECKING:
    from orchestrator.worker.runtime import Runtime

__all__ = ["PoolSpec", "WarmPool", "SizingRound", "demand_spec"]

log = logging.getLogger(__name__)

#: Arrivals kept per pool (the newest).
MAX_ARRIVALS = 1024
#: Weight of the newest measurement in the running estimate of a refill's duration.
REFILL_SMOOTHING = 0.3
#: How long a pool whose container could not be made waits before it is tried again.
FAILURE_BACKOFF_SECONDS = 30.0
#: How long one worker process may size a host's pools before another may.
LOCK_SECONDS = 120
#: How often a sizing round looks for idle containers that died (one engine list call, of
#: the running ones; an inspect for each one that died).
DEAD_SWEEP_SECONDS = 10.0
#: Exit codes of a pool container whose agent could not run (no ``sh`` in the image, say):
#: its pool then waits :data:`FAILURE_BACKOFF_SECONDS` before it makes more.
NO_AGENT_EXIT_CODES = (126, 127)


def demand_spec(request: ToolExecutionRequest, default_pids: int) -> PoolSpec | None:
    """The pool that demand for ``request`` asks for, if a pool can serve it at all."""
    if request.image is None or request.build is not None:
        return None
    limits = request.resource_limits
    pids = limits.pids_limit if limits.pids_limit not in (None, default_pids) else None
    try:
        spec = PoolSpec(
            image=request.image,
            size=1,
            memory_mb=limits.memory_mb,
            cpu_limit=limits.cpu_limit,
            pids_limit=pids,
        )
    except ValidationError:  # limits no pool container may have
        return None
    return spec if spec.matches(request, default_pids) else None


@dataclass(frozen=True)
class SizingRound:
    """What one sizing round did."""

    #: pool key -> size it aimed at
    sizes: dict[str, int]
    made: int = 0
    removed: int = 0


class WarmPool:
    """The pools of one host: taking a container, and sizing them in the background.

    Args:
        rt: the worker's runtime.
        clock: wall-clock time (demand is shared through Redis by the host's workers).
    """

    def __init__(self, rt: Runtime, clock: Callable[[], float] = time.time) -> None:
        self.rt = rt
        self.clock = clock
        self.config = PolicyConfig(max_size=rt.settings.pool_max_size)
        #: running estimate of how long making one container takes here
        self.refill_seconds = 0.5
        self.gate = RunGate()
        #: pool key -> when making its containers may be tried again (after a failure)
        self._backoff: dict[str, float] = {}
        #: when the next sizing round looks for dead idle containers (monotonic)
        self._next_sweep = 0.0
        self.maintainer = Maintainer(
            self._remove, self.size_pools, self.gate, rt.settings.pool_refill_concurrency
        )

    @property
    def specs(self) -> list[PoolSpec]:
        """The pools the operator configured (their sizes are minimums)."""
        return list(self.rt.settings.pool)

    @property
    def adaptive(self) -> bool:
        """True when demand sizes the pools (a memory budget is set)."""
        return self.rt.settings.pool_memory_mb > 0

    def _key(self, spec: PoolSpec) -> str:
        return keys.pool(self.rt.host_name, spec.key)

    def spec_for(self, request: ToolExecutionRequest) -> PoolSpec | None:
        """The pool a request can use, if any."""
        default_pids = self.rt.settings.default_pids_limit
        static = next((s for s in self.specs if s.matches(request, default_pids)), None)
        if static is not None or not self.adaptive:
            return static
        return demand_spec(request, default_pids)

    def take(self, request: ToolExecutionRequest) -> str | None:
        """A running idle container for ``request``, removed from the pool.

        The request counts as demand for its pool, hit or miss (one Redis round trip in
        all). No engine call: a container that died since it was pooled makes the exec
        fail, and the run falls back to a cold container.

        Returns:
            Its id; None when no pool can serve the request or the pool is empty.
        """
        spec = self.spec_for(request)
        if spec is None:
            return None
        host, now = self.rt.host_name, self.clock()
        demand = keys.pool_demand(host, spec.key)
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.spop(self._key(spec))
        pipe.zadd(demand, {f"{now:.6f}:{uuid.uuid4().hex[:8]}": now})
        pipe.expire(demand, int(self.config.horizon_seconds))
        pipe.hset(keys.pool_specs(host), spec.key, spec.model_dump_json())
        container_id = text(pipe.execute()[0])
        if container_id is not None:
            self.gate.enter(container_id)
        self.maintainer.wake()
        return container_id

    def busy(self) -> bool:
        """True when another run than the caller's is in progress on this worker."""
        return self.gate.active > 1

    def make_for(self, request: ToolExecutionRequest) -> str | None:
        """A container of ``request``'s pool made for it now and taken at once: a miss on a
        busy worker runs through the agent like a hit, so that its container's exit and
        teardown come after its result, behind the runs in progress, instead of before it.

        Returns:
            Its id; None when no pool can serve the request, its pool is backing off after
            a failure, or the container could not be made (the run goes cold).
        """
        spec = self.spec_for(request)
        if spec is None or self._backing_off(spec):
            return None
        try:
            container_id = self._make(spec)
        except OrchestratorError as exc:  # an image not here yet (pools never pull) ...
            log.info("no container made on demand for %s: %s", spec.image, exc)
            self._back_off(spec)
            return None
        self.gate.enter(container_id)
        return container_id

    def back_off(self, request: ToolExecutionRequest) -> None:
        """A container of ``request``'s pool could not be made or used (its agent never
        answered): none is made on demand for a while."""
        spec = self.spec_for(request)
        if spec is not None:
            self._back_off(spec)

    def _back_off(self, spec: PoolSpec) -> None:
        """Make no container of ``spec`` for :data:`FAILURE_BACKOFF_SECONDS`."""
        self._backoff[spec.key] = time.monotonic() + FAILURE_BACKOFF_SECONDS

    def _backing_off(self, spec: PoolSpec) -> bool:
        return self._backoff.get(spec.key, 0.0) > time.monotonic()

    def discard(self, container_id: str) -> None:
        """A pool container taken by a run: removed in the background, behind runs. A used
        one is still running (its agent waits for the end of its input after a clean run,
        see :mod:`orchestrator.core.agent`): removing it ends it, and its teardown with
        it, once the result was sent."""
        self.gate.leave(container_id)
        self.maintainer.remove_later(container_id)

    def run_started(self, name: str) -> None:
        """A run named ``name`` (its cold container's name) is in progress on this worker:
        background work waits behind it, so that a burst's cold runs do not share the
        engine with the pool's refill or with removals."""
        self.gate.enter(name)

    def run_ended(self, name: str) -> None:
        """The run named ``name`` is over (whatever became of it)."""
        self.gate.leave(name)

    def remove_later(self, ref: str) -> None:
        """Remove a used cold container (its id or name) in the background, behind the
        runs in progress: its removal comes after its result instead of before it."""
        self.maintainer.remove_later(ref, wake=False)

    def refill_soon(self) -> None:
        """Size the pools in the background from now on (the worker's housekeeping)."""
        self.maintainer.start(sizing=True)
        self.maintainer.wake()

    def refill(self) -> int:
        """Size the pools now; returns how many containers were made."""
        return self.size_pools().made

    # -- sizing -------------------------------------------------------------------------

    def pools(self) -> list[tuple[PoolSpec, int]]:
        """Every pool of this host with its static minimum: configured, or made by demand."""
        found = {spec.key: (spec, spec.size) for spec in self.specs}
        if self.adaptive:
            for raw in self.rt.redis.hvals(keys.pool_specs(self.rt.host_name)):
                spec = PoolSpec.model_validate_json(raw)
                found.setdefault(spec.key, (spec, 0))
        return list(found.values())

    def arrivals(self, spec: PoolSpec, now: float) -> list[float]:
        """The pool's recent arrival times, ascending (older ones are dropped)."""
        demand = keys.pool_demand(self.rt.host_name, spec.key)
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(demand, "-inf", now - self.config.horizon_seconds)
        pipe.zremrangebyrank(demand, 0, -MAX_ARRIVALS - 1)
        pipe.zrange(demand, 0, -1, withscores=True)
        return [score for _, score in pipe.execute()[2]]

    def size_pools(self) -> SizingRound:
        """One sizing round: each pool's size from its demand, within the budget; then
        shrink what is too big and refill what is too small (behind pooled runs).

        One worker process of a host sizes its pools at a time; the others skip the round.
        """
        lock = self.rt.redis.lock(keys.pool_lock(self.rt.host_name), timeout=LOCK_SECONDS)
        if not lock.acquire(blocking=False):
            return SizingRound({})
        try:
            return self._size_pools()
        finally:
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - it expired: another process may size now
                log.warning("the pool sizing lock of %s expired", self.rt.host_name)

    def _size_pools(self) -> SizingRound:
        now = self.clock()
        pools = self.pools()
        self._drop_dead([spec for spec, _ in pools])
        demands, specs = [], {}
        for spec, pinned in pools:
            times = self.arrivals(spec, now) if self.adaptive else []
            wanted = wanted_size(times, now, self.refill_seconds, self.config)
            last = times[-1] if times else 0.0
            demands.append(PoolDemand(spec.key, spec.memory_mb, wanted, pinned, last))
            specs[spec.key] = (spec, bool(times) or pinned > 0)
        budget = self.rt.settings.pool_memory_mb if self.adaptive else 0
        sizes = allocate(demands, budget)
        made = removed = 0
        for key, size in sizes.items():
            spec, live = specs[key]
            idle = int(self.rt.redis.scard(self._key(spec)))
            if idle > size:
                removed += self._shrink(spec, idle - size)
            elif idle < size:
                made += self._grow(spec, size - idle)
            elif size == 0 and not live:  # no demand within the horizon: forget the pool
                self.rt.redis.hdel(keys.pool_specs(self.rt.host_name), key)
        return SizingRound(sizes, made, removed)

    def _drop_dead(self, specs: list[PoolSpec]) -> int:
        """Take idle containers that stopped (killed, OOM, their agent gone) out of their
        pools, at most every :data:`DEAD_SWEEP_SECONDS`, so that the pool refills; a run
        that meets one before that goes cold. Returns how many were dropped."""
        if time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + DEAD_SWEEP_SECONDS
        # The idle ids first: one pooled after the list below would look dead.
        idle = {spec.key: self.rt.redis.smembers(self._key(spec)) for spec in specs}
        if not any(idle.values()):
            return 0
        engine = self.rt.engine
        running = engine.running_container_ids(label_filter(kind=Kind.POOL, host=self.rt.host_name))
        dropped = 0
        for spec in specs:
            for raw in idle[spec.key]:
                container_id = text(raw) or ""
                if container_id in running:
                    continue
                if self.rt.redis.srem(self._key(spec), raw):
                    container = engine.find_container(container_id)
                    code = None if container is None else container.exit_code
                    log.warning(
                        "pool container %s of %s stopped while idle (exit code %s); dropped",
                        container_id[:12],
                        spec.image,
                        code,
                    )
                    self.maintainer.remove_later(container_id)
                    if code in NO_AGENT_EXIT_CODES:  # e.g. no sh: remaking it at once fails too
                        self._back_off(spec)
                    dropped += 1
        return dropped

    def _shrink(self, spec: PoolSpec, count: int) -> int:
        taken = [text(raw) or "" for raw in self.rt.redis.spop(self._key(spec), count) or []]
        self.maintainer.run_all(self._remove, taken)
        return len(taken)

    def _grow(self, spec: PoolSpec, count: int) -> int:
        if self._backing_off(spec):
            return 0

        def make(_: str) -> bool:
            try:
                container_id = self._make(spec)
            except OrchestratorError as exc:  # an image not here (pools never pull) ...
                log.warning("could not make a pool container of %s: %s", spec.image, exc)
                self._back_off(spec)
                return False
            self.rt.redis.sadd(self._key(spec), container_id)
            return True

        return sum(self.maintainer.run_all(make, [spec.key] * count))

    def _make(self, spec: PoolSpec) -> str:
        engine = self.rt.engine
        started = time.monotonic()
        suffix = uuid.uuid4().hex[:10]
        made = pool_spec(spec, settings=self.rt.settings, now=time.time(), suffix=suffix)
        container_id = engine.create_container_id(made)
        try:
            engine.start_container(container_id)
        except OrchestratorError:
            self._remove(container_id)
            raise
        took = time.monotonic() - started
        self.refill_seconds += REFILL_SMOOTHING * (took - self.refill_seconds)
        return container_id

    def _remove(self, container_id: str) -> None:
        try:
            self.rt.engine.remove_container(container_id)
        except OrchestratorError:
            log.warning("could not remove container %s; the janitor will", container_id)

    def drain(self, wait_seconds: float = 30) -> int:
        """At shutdown: stop the background work, remove the used containers and every idle
        pool container of this host; returns how many idle ones were removed."""
        self.maintainer.stop(wait_seconds)
        self.maintainer.remove_pending()
        removed = 0
        for spec, _ in self.pools():
            while (raw := self.rt.redis.spop(self._key(spec))) is not None:
                try:
                    removed += self.rt.engine.remove_container(text(raw) or "")
                except OrchestratorError:
                    continue
        return removed
