"""Execution leases: which worker runs an execution right now.

A worker takes an execution's lease (``SET NX PX``) before touching its
container and renews it while the run lasts. Another delivery of the same
execution id (the Redis broker redelivers unacknowledged messages after its
visibility timeout, or the reaper re-enqueues) finds the lease held and does
not run the tool again. A worker that dies stops renewing; its lease expires
and the reaper re-enqueues the execution, whose new delivery attaches to the
existing container.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)

# Renew or release only a lease we still own.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
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
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def acquire(self, execution_id: str) -> bool:
        """Take the lease; False when another live worker holds it."""
        if not self.redis.set(keys.lease(execution_id), self.owner, nx=True, px=self.lease_ms):
            return False
        with self._lock:
            self._held.add(execution_id)
            self._lost.discard(execution_id)
        return True

    def holder(self, execution_id: str) -> str | None:
        """The token holding an execution's lease, or None when it is free."""
        return text(self.redis.get(keys.lease(execution_id)))

    def release(self, execution_id: str) -> None:
        """Give the lease back (only if still ours)."""
        with self._lock:
            self._held.discard(execution_id)
            self._lost.discard(execution_id)
        self._release(keys=[keys.lease(execution_id)], args=[self.owner])

    def lost(self, execution_id: str) -> bool:
        """True when a renewal found the lease taken over by someone else."""
        with self._lock:
            return execution_id in self._lost

    def renew_all(self) -> None:
        """Extend every held lease; remember the ones we no longer own."""
        with self._lock:
            held = list(self._held)
        for execution_id in held:
            ok = self._renew(keys=[keys.lease(execution_id)], args=[self.owner, self.lease_ms])
            if not ok:
                log.warning("lease of execution %s was lost", execution_id)
                with self._lock:
                    self._lost.add(execution_id)

    @property
    def held(self) -> frozenset[str]:
        """The execution ids whose leases this worker holds."""
        with self._lock:
            return frozenset(self._held)
