"""The warm pool's background work: the gate it waits behind, and its two threads."""

from __future__ import annotations

import threading

from orchestrator.worker.pool_refill import HitGate, Maintainer


def test_a_free_gate_is_clear_after_the_settle_time() -> None:
    gate = HitGate(settle_seconds=0.01)
    assert gate.wait_clear(0.5)


def test_background_work_waits_behind_a_run_in_progress_and_the_settle_time() -> None:
    gate = HitGate(settle_seconds=0.05)
    gate.enter("c1")
    assert not gate.wait_clear(0.02)  # in progress
    gate.leave("c1")
    assert gate.active == 0
    assert gate.wait_clear(5.0)


def test_leaving_with_a_container_never_taken_changes_nothing() -> None:
    gate = HitGate(settle_seconds=0.0)
    gate.leave("never-entered")
    assert gate.wait_clear(0.01)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def of(self, kind: str):
        def record(ref: str) -> None:
            self.calls.append((kind, ref))
            self.done.set()

        return record


def test_a_removal_waits_behind_the_pooled_run_in_progress() -> None:
    seen = Recorder()
    gate = HitGate(0.0)
    maintainer = Maintainer(seen.of("remove"), lambda: None, gate, 1)
    try:
        gate.enter("running")
        maintainer.remove_later("used")
        assert not seen.done.wait(0.2)  # behind the run (the gate lets it pass after 1 s)
        gate.leave("running")
        assert seen.done.wait(2)
        assert seen.calls == [("remove", "used")]
    finally:
        maintainer.stop(5)


def test_stop_ends_both_threads_and_leaves_nothing_pending() -> None:
    seen = Recorder()
    maintainer = Maintainer(seen.of("remove"), lambda: None, HitGate(0.0), 1)
    maintainer.start(sizing=True)
    maintainer.stop(5)
    threads = [maintainer._thread, maintainer._remover]
    assert all(t is not None and not t.is_alive() for t in threads)
    maintainer.remove_later("late")  # after a stop: started again, and stoppable again
    assert seen.done.wait(2)
    maintainer.stop(5)
    assert maintainer.remove_pending() == 0
