"""Background work (the warm pool's refill, removals): the gate it waits behind, and its
two threads."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.worker import pool_refill
from orchestrator.worker.pool_refill import Maintainer, RunGate


def test_a_free_gate_is_clear_after_the_settle_time() -> None:
    gate = RunGate(settle_seconds=0.01)
    assert gate.wait_clear(0.5)


def test_background_work_waits_behind_a_run_in_progress_and_the_settle_time() -> None:
    gate = RunGate(settle_seconds=0.05)
    gate.enter("c1")
    assert not gate.wait_clear(0.02)  # in progress
    gate.leave("c1")
    assert gate.active == 0
    assert gate.wait_clear(5.0)


def test_leaving_with_a_container_never_taken_changes_nothing() -> None:
    gate = RunGate(settle_seconds=0.0)
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
    gate = RunGate(0.0)
    maintainer = Maintainer(seen.of("remove"), lambda: None, gate, 1)
    try:
        gate.enter("running")
        maintainer.remove_later("used")
        assert not seen.done.wait(0.2)  # behind the run (the gate lets it pass after 2 s)
        gate.leave("running")
        assert seen.done.wait(2)
        assert seen.calls == [("remove", "used")]
    finally:
        maintainer.stop(5)


def test_stop_ends_both_threads_and_leaves_nothing_pending() -> None:
    seen = Recorder()
    maintainer = Maintainer(seen.of("remove"), lambda: None, RunGate(0.0), 1)
    maintainer.start(sizing=True)
    maintainer.stop(5)
    threads = [maintainer._thread, maintainer._remover]
    assert all(t is not None and not t.is_alive() for t in threads)
    maintainer.remove_later("late")  # after a stop: started again, and stoppable again
    assert seen.done.wait(2)
    maintainer.stop(5)
    assert maintainer.remove_pending() == 0


def test_removals_keep_up_with_a_load_that_never_lets_the_gate_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_refill, "MAX_DEFER_SECONDS", 0.3)
    removed: list[str] = []
    gate = RunGate(0.0)
    maintainer = Maintainer(removed.append, lambda: None, gate, 1)
    try:
        gate.enter("always-running")
        for n in range(20):
            maintainer.remove_later(f"used-{n}", wake=False)
        deadline = time.monotonic() + 5
        while len(removed) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        # One deferral for everything queued by then, not one deferral per container.
        assert removed == [f"used-{n}" for n in range(20)]
        assert time.monotonic() - (deadline - 5) < 1.5
    finally:
        gate.leave("always-running")
        maintainer.stop(5)


def test_a_long_run_holds_background_work_back_only_while_it_is_young(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_refill, "MAX_DEFER_SECONDS", 0.3)
    gate = RunGate(settle_seconds=0.0)
    gate.enter("long-tool")
    assert not gate.wait_clear(0.1)  # young: held back

    time.sleep(0.3)

    started = time.monotonic()
    assert gate.wait_clear(1.0)  # still running, but no longer young: clear at once
    assert time.monotonic() - started < 0.1
    assert gate.active == 1
    gate.enter("burst-run")
    assert not gate.wait_clear(0.1)  # a new run is young again
