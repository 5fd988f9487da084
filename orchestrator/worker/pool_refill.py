"""The warm pool's background work, kept behind the runs it serves.

Making a container (create and start) or removing one costs the engine about as much
CPU as a cold run. Done while a pooled run executes, it slows that run down. So:

- :class:`HitGate` counts the pooled runs in progress on this worker; background work
  waits until none is (and a moment more, for the result to reach its client), or at most
  :data:`MAX_DEFER_SECONDS`, so that a steady stream of runs never starves the refill;
- :class:`Maintainer` is one daemon thread that, once the worker's housekeeping asked for
  it, sizes the pools again whenever a run took a container (the engine work itself is
  spread over at most ``pool_refill_concurrency`` threads), and a second one that removes
  each used container in the gap right after its run, beside the refill's start, rather
  than after that start, where it would meet the next run. A used container is still
  running then (its agent waits, see :mod:`orchestrator.core.agent`): its teardown too
  comes after the result instead of during the run's last milliseconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["HitGate", "Maintainer", "MAX_DEFER_SECONDS", "SETTLE_SECONDS"]

log = logging.getLogger(__name__)

#: Longest a piece of background work waits behind pooled runs.
MAX_DEFER_SECONDS = 1.0
#: Quiet time after the last pooled run ended before background work starts.
SETTLE_SECONDS = 0.01
#: How often the maintainer looks at the pools without being woken.
PERIOD_SECONDS = 1.0


class HitGate:
    """The pooled runs in progress on this worker, which background work waits behind."""

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        self._active: set[str] = set()
        self._quiet_since = 0.0
        self._changed = threading.Condition()

    @property
    def active(self) -> int:
        """Pooled runs in progress."""
        with self._changed:
            return len(self._active)

    def enter(self, container_id: str) -> None:
        """A pooled run took ``container_id``."""
        with self._changed:
            self._active.add(container_id)

    def leave(self, container_id: str) -> None:
        """The run in ``container_id`` is over (a container it never took is ignored)."""
        with self._changed:
            if container_id in self._active:
                self._active.discard(container_id)
                self._quiet_since = time.monotonic()
                self._changed.notify_all()

    def wait_clear(self, max_seconds: float = MAX_DEFER_SECONDS) -> bool:
        """Wait until no pooled run is in progress (and has not been for the settle time).

        Returns:
            True when it is clear, False when ``max_seconds`` passed first.
        """
        deadline = time.monotonic() + max_seconds
        with self._changed:
            while True:
                now = time.monotonic()
                quiet = now - self._quiet_since
                if not self._active and quiet >= self.settle_seconds:
                    return True
                if now >= deadline:
                    return False
                wait = deadline - now
                if not self._active:
                    wait = min(wait, self.settle_seconds - quiet)
                self._changed.wait(wait)


class Maintainer:
    """One daemon thread doing a pool's background work.

    Args:
        remove: removes (and ends) one container (errors are its own to log).
        size_pools: one sizing round (shrink and refill); called only once :meth:`start`
            was asked for it with ``sizing=True``.
        gate: the pooled runs to stay behind.
        concurrency: engine calls in flight at once.
    """

    def __init__(
        self,
        remove: Callable[[str], None],
        size_pools: Callable[[], Any],
        gate: HitGate,
        concurrency: int,
    ) -> None:
        self._remove = remove
        self._size_pools = size_pools
        self.gate = gate
        self.concurrency = concurrency
        # container ids | None (to wake the remover)
        self._removals: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sizing = False
        self._thread: threading.Thread | None = None
        self._remover: threading.Thread | None = None

    def start(self, *, sizing: bool = False) -> None:
        """Run the threads (idempotent); ``sizing`` also sizes the pools from now on."""
        with self._lock:
            self._sizing = self._sizing or sizing
            if not (_alive(self._thread) or _alive(self._remover)):
                self._stop.clear()  # (one still running may be stopping: stop() decides)
            if not _alive(self._thread):
                self._thread = _started(self._loop, "pool-maintainer")
            if not _alive(self._remover):
                self._remover = _started(self._remove_loop, "pool-remover")

    def wake(self) -> None:
        """Look at the pools again soon (a run took a container, or one was used)."""
        self._wake.set()

    def remove_later(self, container_id: str) -> None:
        """Remove ``container_id`` in the background, behind the pooled runs in progress.
        Wakes the sizing: its pool may want another."""
        self._removals.put(container_id)
        self.start()
        self.wake()

    def stop(self, wait_seconds: float = 30) -> None:
        """Stop the threads (the round or removal in progress finishes) and stop sizing."""
        with self._lock:
            self._sizing = False
            threads = [self._thread, self._remover]
        self._stop.set()
        self._wake.set()
        self._removals.put(None)  # wakes the remover
        deadline = time.monotonic() + wait_seconds
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def remove_pending(self) -> int:
        """Remove the containers waiting for removal now; returns how many there were."""
        pending: list[str] = []
        while True:
            try:
                item = self._removals.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        self.run_all(self._remove, pending, behind_hits=False)
        return len(pending)

    def run_all(
        self, work: Callable[[str], Any], items: Iterable[str], *, behind_hits: bool = True
    ) -> list[Any]:
        """``work`` on each item, ``concurrency`` at a time, each behind the pooled runs."""

        def one(item: str) -> Any:
            if behind_hits:
                self.gate.wait_clear()
            return work(item)

        listed = list(items)
        if len(listed) <= 1 or self.concurrency == 1:
            return [one(item) for item in listed]
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="pool-engine") as threads:
            return list(threads.map(one, listed))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(PERIOD_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._sizing:
                    self._size_pools()
            except Exception:  # noqa: BLE001 - Redis or the engine away: the next round retries
                log.exception("warm pool maintenance failed; retrying")

    def _remove_loop(self) -> None:
        while not self._stop.is_set():
            ref = self._removals.get()
            if ref is None:
                continue
            try:
                self.gate.wait_clear()
                self._remove(ref)
            except Exception:  # noqa: BLE001 - the janitor reaps what is left
                log.exception("could not remove pool container %s", ref)


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _started(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running ``target``, started."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
