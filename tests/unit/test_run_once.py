"""No tool runs twice: the races the chaos test (tests/integration/test_chaos.py) hit under
``kill -9``, a Redis restart and an engine lost, replayed deterministically on fakeredis and
the in-memory engine. Each test counts the tool containers created and started."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import DockerUnavailable
from orchestrator.models import ToolExecutionRequest, ToolExecutionResult
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker.execution import run_execution
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
NAME = "orch-tool-e1"
REQUEST = ToolExecutionRequest(
    session_id="s1", tool_name="echo", image="busybox:latest", command=["sh", "-c", "echo hi"]
)


class Enqueued:
    """What a runtime's reaper would send again."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, execution_id: str, *args: Any, **kwargs: Any) -> None:
        self.ids.append(execution_id)


def worker(redis: Any, engine: FakeEngine) -> Runtime:
    """One worker process of host h1: its own lease token, the shared Redis and engine."""
    return Runtime(SETTINGS, redis, engine=engine, enqueue=Enqueued())


def tool_starts(engine: FakeEngine) -> int:
    return len(engine.called("start_container"))


def tool_creations(engine: FakeEngine) -> int:
    specs = [spec for (spec,) in engine.called("create_container")]
    return sum(1 for s in specs if s.labels["orchestrator.kind"] == "tool")


class Killed(BaseException):
    """The worker process dies here (``kill -9``): nothing after this line runs."""


def test_a_worker_killed_before_it_stored_the_result_leaves_the_container_for_the_next(
    redis, engine, monkeypatch
):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n"))
    first = worker(redis, engine)

    def killed(result: ToolExecutionResult) -> None:
        raise Killed

    monkeypatch.setattr(first.executions, "finish", killed)
    with pytest.raises(Killed):
        run_execution(first, REQUEST, "e1")
    monkeypatch.undo()
    redis.delete(keys.lease("e1"))  # the dead worker's lease expired

    second = worker(redis, engine)
    result = run_execution(second, REQUEST, "e1", requeued=True)

    assert result.status == "succeeded" and result.stdout == "once\n"
    assert tool_creations(engine) == 1
    assert tool_starts(engine) == 1  # the second delivery collected the first run
    second.pool.drain()  # the removal queued behind the run
    assert engine.find_container(NAME) is None  # and removed its container


def test_an_engine_lost_mid_run_keeps_the_container_for_the_retry_which_attaches(redis, engine):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n", run_seconds=0.3))
    rt = worker(redis, engine)
    engine.fail_next("wait_container", DockerUnavailable("wait: Docker engine unreachable"))

    with pytest.raises(DockerUnavailable):
        run_execution(rt, REQUEST, "e1")
    assert engine.find_container(NAME) is not None  # not removed once the engine is back

    result = run_execution(rt, REQUEST, "e1")  # Celery's retry, same task id

    assert result.status == "succeeded" and result.stdout == "once\n"
    assert tool_creations(engine) == 1
    assert tool_starts(engine) == 1


def test_an_attempt_whose_container_vanished_after_an_earlier_one_made_it_does_not_rerun(
    redis, engine
):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n", run_seconds=0.2))
    rt = worker(redis, engine)
    engine.fail_next("wait_container", DockerUnavailable("wait: Docker engine unreachable"))
    with pytest.raises(DockerUnavailable):
        run_execution(rt, REQUEST, "e1")
    engine.remove_container(NAME)  # gone before any result was stored

    result = run_execution(rt, REQUEST, "e1")

    assert result.status == "error"
    assert "not run again" in (result.error or "") and NAME in (result.error or "")
    assert tool_creations(engine) == 1
    assert tool_starts(engine) == 1


def test_a_lease_lapsed_while_its_worker_lives_is_taken_back_and_not_re_enqueued(redis, engine):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n", run_seconds=1.0))
    holder, other = worker(redis, engine), worker(redis, engine)
    holder.leases.renew_all()  # a housekeeping round: the holder's worker is alive
    done: dict[str, ToolExecutionResult] = {}
    runner = threading.Thread(
        target=lambda: done.update(r=run_execution(holder, REQUEST, "e1")), daemon=True
    )
    runner.start()
    while engine.find_container(NAME) is None or holder.leases.holder("e1") is None:
        time.sleep(0.01)

    redis.delete(keys.lease("e1"))  # Redis was down longer than the lease
    assert other.reap_expired() == []  # the holder lives: no copy runs beside it
    holder.leases.renew_all()  # its next round takes the lease back
    assert other.leases.holder("e1") == holder.leases.owner
    runner.join(10)

    assert done["r"].status == "succeeded"
    assert other.enqueue.ids == []  # type: ignore[attr-defined]
    assert tool_creations(engine) == 1 and tool_starts(engine) == 1


def test_a_lease_of_a_dead_worker_is_re_enqueued_once_its_liveness_mark_is_gone(redis, engine):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n"))
    dead, reaper = worker(redis, engine), worker(redis, engine)
    dead.leases.renew_all()
    dead.leases.acquire("e1")
    dead.executions.start("e1", {"host": "h1", "request": REQUEST.redacted()})
    redis.delete(keys.lease("e1"))

    assert reaper.reap_expired() == []  # silent for less than its liveness mark
    redis.delete(keys.worker_alive(dead.leases.owner))  # the mark expired: it is dead

    assert reaper.reap_expired() == ["e1"]
    assert reaper.enqueue.ids == ["e1"]  # type: ignore[attr-defined]


def test_a_late_attempt_that_lost_the_container_returns_the_result_stored_first(
    redis, engine, monkeypatch
):
    engine.add_image("busybox:latest", FakeProgram(stdout=b"once\n"))
    first, late = worker(redis, engine), worker(redis, engine)
    stored = late.executions.result
    # The late copy checked for a result just before the first attempt stored it (its lease
    # had been taken over while it stalled); it then finds the container gone.
    checks = iter([None])
    monkeypatch.setattr(late.executions, "result", lambda e: next(checks, None) or stored(e))
    won = run_execution(first, REQUEST, "e1")

    again = run_execution(late, REQUEST, "e1", requeued=True)

    assert won.status == "succeeded" and won.stdout == "once\n"
    assert again == won  # the run's result, not the late copy's error
    assert first.executions.result("e1") == won
    assert tool_creations(engine) == 1 and tool_starts(engine) == 1
