"""Execution leases: which worker runs an execution right now.

A worker takes an execution's lease (``SET NX PX``) before touching its
container and renews it while the run lasts. Another delivery of the same
execution id (the Redis broker redelivers unacknowledged messages after its
visibility timeout, or the reaper re-enqueues) finds the lease held and does
not run the tool again. A worker that dies stops renewing; its lease expires
and the reaper re-enqueues the execution, whose new delivery attaches to the
existing container.

A lease can also lapse while its worker lives: Redis was down (restarted) or the
worker stalled for longer than a lease. Its holder takes it back at its next
renewal, and the reaper leaves it that chance: it re-enqueues an execution only
when the worker that last held the lease is silent too (:meth:`LeaseKeeper.abandoned`),
and a worker's liveness mark outlasts its leases threefold. Without that, a
re-enqueued copy would run beside the live holder.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["LeaseKeeper", "ALIVE_LEASES"]

log = logging.getLogger(__name__)

#: A worker's liveness mark lasts this many leases past its last renewal round.
ALIVE_LEASES = 3

# Take a free lease and note who took it (the reaper asks whether that worker lives).
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""
# Renew a lease we still own, or take back one that lapsed and nobody took
# (1: renewed, 2: taken back, 0: another worker holds it).
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
# Release only a lease we still own.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[2])
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaseKeeper:
    """Takes, renews and releases the leases of one worker process.

    Args:
        redis: a redis-py client.
        lease_seconds: lifetime of a lease without renewal.
        owner: this worker's token (host, pid and a random part by default).
    """

    def __init__(self, redis: Any, lease_seconds: float, owner: str | None = None) -> None:
        self.redis = redis
        self.lease_ms = int(lease_seconds * 1000)
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _keys(self, execution_id: str) -> list[str]:
        return [keys.lease(execution_id), keys.last_holder(execution_id)]

    def acquire(self, execution_id: str) -> bool:
        """Take the lease; False when another live worker holds it."""
        # The holder's note outlives the lease by far: the reaper reads it once the lease
        # is gone, to ask whether that worker still lives.
        note_ms = self.lease_ms * (ALIVE_LEASES + 2)
        if not self._acquire(
            keys=self._keys(execution_id), args=[self.owner, self.lease_ms, note_ms]
        ):
            return False
        with self._lock:
            self._held.add(execution_id)
            self._lost.discard(execution_id)
        return True

    def holder(self, execution_id: str) -> str | None:
        """The token holding an execution's lease, or None when it is free."""
        return text(self.redis.get(keys.lease(execution_id)))

    def abandoned(self, execution_id: str) -> bool:
        """True when nobody holds the lease and the worker that last held it is silent.

        A worker marks itself alive at every renewal round, for :data:`ALIVE_LEASES`
        leases: a lease that lapsed while its worker lives (Redis restarted, the process
        stalled) is taken back at that worker's next renewal, and is not abandoned.
        """
        if self.holder(execution_id) is not None:
            return False
        last = text(self.redis.get(keys.last_holder(execution_id)))
        return last is None or not self.redis.exists(keys.worker_alive(last))

    def release(self, execution_id: str) -> None:
        """Give the lease back (only if still ours)."""
        with self._lock:
            self._held.discard(execution_id)
            self._lost.discard(execution_id)
        self._release(keys=self._keys(execution_id), args=[self.owner])

    def lost(self, execution_id: str) -> bool:
        """True when a renewal found the lease taken over by someone else."""
        with self._lock:
            return execution_id in self._lost

    def renew_all(self) -> None:
        """Mark this worker alive and extend every held lease, taking back the ones that
        lapsed while nobody took them; remember the ones another worker took."""
        self.redis.set(keys.worker_alive(self.owner), "1", px=self.lease_ms * ALIVE_LEASES)
        with self._lock:
            held = list(self._held)
        for execution_id in held:
            done = self._renew(keys=[keys.lease(execution_id)], args=[self.owner, self.lease_ms])
            if done == 2:
                log.warning("lease of execution %s had lapsed; taken back", execution_id)
            elif not done:
                log.warning("lease of execution %s was lost", execution_id)
                with self._lock:
                    self._lost.add(execution_id)

    @property
    def held(self) -> frozenset[str]:
        """The execution ids whose leases this worker holds."""
        with self._lock:
            return frozenset(self._held)
