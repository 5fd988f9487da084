"""Background work kept behind the runs it serves: the warm pool's refill, and the
removal of used containers, pooled or cold.

Making a container (create and start) or removing one costs the engine about as much
CPU as a cold run. Done while a run executes, it slows that run down. So:

- :class:`RunGate` counts the runs in progress on this worker (pooled and cold);
  background work waits until none that started within :data:`MAX_DEFER_SECONDS` is (and
  a moment more, for the result to reach its client), or at most that long, so that a
  steady stream of runs never starves it and a long run does not hold it back;
- :class:`Maintainer` is one daemon thread that, once the worker's housekeeping asked for
  it, sizes the pools again whenever a run took a container (the engine work itself is
  spread over at most ``pool_refill_concurrency`` threads), and a second one that removes
  used containers in the gap right after the runs, everything queued at once. A used pool
  container is still running then (its agent waits, see :mod:`orchestrator.core.agent`):
  its teardown too comes after the result instead of during the run's last milliseconds.
  A cold run's container has exited: its removal comes after the result, not before it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["RunGate", "Maintainer", "MAX_DEFER_SECONDS", "SETTLE_SECONDS"]

log = logging.getLogger(__name__)

#: Longest a piece of background work waits behind runs in progress (a burst of cold runs
#: on a 2-core host takes about a second: its pool's refill comes after it).
MAX_DEFER_SECONDS = 2.0
#: Quiet time after the last run ended before background work starts.
SETTLE_SECONDS = 0.01
#: How often the maintainer looks at the pools without being woken.
PERIOD_SECONDS = 1.0


class RunGate:
    """The runs in progress on this worker (pooled or cold), which background work waits
    behind while they are young.

    A run holds background work back for its first :data:`MAX_DEFER_SECONDS` only: a
    burst of short runs keeps the engine to itself, while a tool that runs for minutes
    does not stall the refill (each piece of background work would otherwise wait the
    whole deferral behind it).
    """

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        #: ref -> when it entered (monotonic)
        self._active: dict[str, float] = {}
        self._quiet_since = 0.0
        self._changed = threading.Condition()

    @property
    def active(self) -> int:
        """Runs in progress, young or not."""
        with self._changed:
            return len(self._active)

    def enter(self, container_id: str) -> None:
        """A run uses ``container_id`` (a pool container it took, or its cold one's name)."""
        with self._changed:
            self._active.setdefault(container_id, time.monotonic())

    def leave(self, container_id: str) -> None:
        """The run in ``container_id`` is over (a container it never took is ignored)."""
        with self._changed:
            if self._active.pop(container_id, None) is not None:
                self._quiet_since = time.monotonic()
                self._changed.notify_all()

    def wait_clear(self, max_seconds: float | None = None) -> bool:
        """Wait until no young run is in progress (and none ended within the settle time),
        at most ``max_seconds`` (:data:`MAX_DEFER_SECONDS` when None).

        Returns:
            True when it is clear, False when ``max_seconds`` passed first.
        """
        longest = MAX_DEFER_SECONDS if max_seconds is None else max_seconds
        deadline = time.monotonic() + longest
        with self._changed:
            while True:
                now = time.monotonic()
                young = [t + MAX_DEFER_SECONDS for t in self._active.values()]
                young = [end for end in young if end > now]
                quiet = now - self._quiet_since
                if not young and quiet >= self.settle_seconds:
                    return True
                if now >= deadline:
                    return False
                wait = deadline - now
                if young:
                    wait = min(wait, min(young) - now)
                else:
                    wait = min(wait, self.settle_seconds - quiet)
                self._changed.wait(wait)


class Maintainer:
    """One daemon thread doing a pool's background work.

    Args:
        remove: removes (and ends) one container (errors are its own to log).
        size_pools: one sizing round (shrink and refill); called only once :meth:`start`
            was asked for it with ``sizing=True``.
        gate: the runs to stay behind.
        concurrency: engine calls in flight at once.
    """

    def __init__(
        self,
        remove: Callable[[str], None],
        size_pools: Callable[[], Any],
        gate: RunGate,
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

    def remove_later(self, container_id: str, *, wake: bool = True) -> None:
        """Remove ``container_id`` (an id or a name) in the background, behind the runs in
        progress. With ``wake``, the sizing looks at the pools again: its pool may want
        another."""
        self._removals.put(container_id)
        self.start()
        if wake:
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
        pending = self._pending()
        self.run_all(self._remove, pending, behind_runs=False)
        return len(pending)

    def _pending(self, first: str | None = None) -> list[str]:
        """``first`` (if any) and every container queued for removal after it."""
        pending = [first] if first is not None else []
        while True:
            try:
                item = self._removals.get_nowait()
            except queue.Empty:
                return pending
            if item is not None:
                pending.append(item)

    def run_all(
        self, work: Callable[[str], Any], items: Iterable[str], *, behind_runs: bool = True
    ) -> list[Any]:
        """``work`` on each item, ``concurrency`` at a time, each behind the runs in progress."""

        def one(item: str) -> Any:
            if behind_runs:
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
        # Once clear (or after the longest deferral), everything queued by then goes: under
        # a steady load, removals keep up with the runs instead of one per deferral.
        while not self._stop.is_set():
            ref = self._removals.get()
            if ref is None:
                continue
            self.gate.wait_clear()
            for item in self._pending(ref):
                try:
                    self._remove(item)
                except Exception:  # noqa: BLE001 - the janitor reaps what is left
                    log.exception("could not remove container %s", item)


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _started(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running ``target``, started."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
