"""The adaptive warm pool: the pure sizing policy (fake clock), and the pools of a worker
sized by it (fakeredis, FakeEngine, fake clock): growth, shrink, budget, static minimum."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.core.pool_policy import (
    PolicyConfig,
    PoolDemand,
    allocate,
    burst_size,
    keep_warm_seconds,
    served_size,
    wanted_size,
)
from orchestrator.engine.fake import FakeEngine, FakeExec, FakeProgram
from orchestrator.errors import DockerError
from orchestrator.models import ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker.execution import run_execution
from orchestrator.worker.pool import WarmPool, demand_spec
from orchestrator.worker.runtime import Runtime

CONFIG = PolicyConfig()


# -- the policy ------------------------------------------------------------------------


def test_a_burst_is_the_most_arrivals_within_the_window():
    arrivals = [0.0, 0.1, 0.2, 5.0, 5.05, 5.1, 5.2, 20.0]

    assert burst_size(arrivals, 1.0) == 4
    assert burst_size(arrivals, 0.01) == 1
    assert burst_size([], 1.0) == 0


def test_the_served_size_is_the_fewest_containers_that_serve_the_fraction():
    bursts = [float(b * 10) + i * 0.01 for b in range(10) for i in range(3)]  # ten of 3
    rare = bursts + [200.0 + i * 0.01 for i in range(8)]  # then one of 8

    assert served_size(bursts, 1.0, 1.0) == 3
    assert served_size(bursts, 1.0, 0.95) == 3  # 2 would serve only 20 of 30
    assert served_size(rare, 1.0, 1.0) == 8 == burst_size(rare, 1.0)
    # 6 serve 36 of the 38 arrivals (94.7%), 7 serve 37 (97.4%): the peak's last goes cold.
    assert served_size(rare, 1.0, 0.95) == 7
    assert served_size([], 1.0, 0.95) == 0


def test_a_demand_too_small_for_the_fraction_is_served_whole():
    arrivals = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]  # one burst of 6: 6 < 1 / (1 - 0.95)

    assert served_size(arrivals, 1.0, 0.95) == 6


def test_one_rare_peak_does_not_hold_its_size_for_the_whole_horizon():
    steps = [float(b * 5) + i * 0.05 for b in range(40) for i in range(2)]  # 40 steps of 2
    arrivals = sorted(steps + [201.0 + i * 0.05 for i in range(10)])  # and one burst of 10

    assert wanted_size(arrivals, now=210.0, refill_seconds=0.3, config=CONFIG) < 10
    assert wanted_size(arrivals, 210.0, 0.3, PolicyConfig(served_fraction=1.0)) == 10


def test_a_pool_grows_to_the_largest_recent_burst():
    arrivals = [100.0 + i * 0.05 for i in range(6)]  # six parallel tool calls

    assert wanted_size(arrivals, now=101.0, refill_seconds=0.3, config=CONFIG) == 6


def test_a_steady_stream_slower_than_a_refill_needs_one_container():
    arrivals = [float(i * 2) for i in range(30)]  # one call every 2 s, refills take 0.3 s

    assert wanted_size(arrivals, now=59.0, refill_seconds=0.3, config=CONFIG) == 1


def test_a_stream_faster_than_the_refill_needs_what_arrives_while_one_is_made():
    arrivals = [i * 0.25 for i in range(40)]  # 4 calls/s, a refill takes 1.5 s

    assert wanted_size(arrivals, now=10.0, refill_seconds=1.5, config=CONFIG) == 7


def test_a_pool_shrinks_to_nothing_once_demand_stopped_for_its_keep_warm_period():
    arrivals = [0.0, 0.1, 0.2]
    keep = keep_warm_seconds(arrivals, CONFIG)  # no idle gaps seen yet: the default

    assert keep == CONFIG.keep_warm_default_seconds
    assert wanted_size(arrivals, now=0.2 + keep - 1, refill_seconds=0.3, config=CONFIG) == 3
    assert wanted_size(arrivals, now=0.2 + keep + 1, refill_seconds=0.3, config=CONFIG) == 0


def test_a_burst_counts_while_the_pool_is_in_use_and_not_past_the_horizon():
    burst = [i * 0.01 for i in range(8)]
    later = [100.0 + i * 10 for i in range(10)]  # then one at a time, 10 s apart
    arrivals = burst + later

    # Still in use: ready for another burst like the one it saw.
    assert wanted_size(arrivals, now=191.0, refill_seconds=0.3, config=CONFIG) == 8
    # The worker drops arrivals older than the horizon: then only single calls are left.
    now = 1700.0 + CONFIG.horizon_seconds / 2
    kept = [t for t in [*arrivals, *later_calls(1700.0)] if t > now - CONFIG.horizon_seconds]
    assert wanted_size(kept, now=now, refill_seconds=0.3, config=CONFIG) == 1


def later_calls(start: float) -> list[float]:
    """One call every 10 s for 15 minutes from ``start``."""
    return [start + i * 10 for i in range(90)]


def test_the_keep_warm_period_follows_the_idle_gaps_seen():
    every_10s = [float(i * 10) for i in range(10)]
    every_100s = [float(i * 100) for i in range(10)]
    every_hour = [float(i * 3600) for i in range(10)]

    assert keep_warm_seconds(every_10s, CONFIG) == 20.0  # twice the usual gap
    assert keep_warm_seconds(every_100s, CONFIG) == 200.0
    assert keep_warm_seconds(every_hour, CONFIG) == CONFIG.keep_warm_max_seconds
    assert keep_warm_seconds([0.0, 1.5, 3.0, 4.5], CONFIG) == CONFIG.keep_warm_min_seconds


def test_no_pool_grows_past_its_maximum():
    arrivals = [i * 0.001 for i in range(100)]

    assert wanted_size(arrivals, 1.0, 0.3, PolicyConfig(max_size=16)) == 16


def test_static_minimums_always_stand_even_past_the_budget():
    demands = [PoolDemand("a", 512, wanted=0, pinned=4), PoolDemand("b", 512, wanted=3)]

    assert allocate(demands, budget_mb=1024) == {"a": 4, "b": 0}


def test_the_budget_caps_the_sum_of_the_pools_memory():
    demands = [
        PoolDemand("big", 1024, wanted=4, last_arrival=10.0),
        PoolDemand("small", 128, wanted=4, last_arrival=5.0),
    ]

    sizes = allocate(demands, budget_mb=2048)

    assert sizes == {"big": 1, "small": 4}  # round robin: big, small, (big no longer fits)
    assert sum(sizes[d.key] * d.memory_mb for d in demands) <= 2048


def test_the_most_recently_used_pool_is_served_first_when_the_budget_is_short():
    demands = [
        PoolDemand("old", 256, wanted=2, last_arrival=1.0),
        PoolDemand("new", 256, wanted=2, last_arrival=9.0),
    ]

    assert allocate(demands, budget_mb=768) == {"old": 1, "new": 2}


def test_a_static_pool_grows_above_its_minimum_with_demand():
    demands = [PoolDemand("a", 128, wanted=6, pinned=2)]

    assert allocate(demands, budget_mb=4096) == {"a": 6}
    assert allocate(demands, budget_mb=0) == {"a": 2}


# -- the pools of a worker ---------------------------------------------------------------

IMAGE = "tool:1"
LIMITS = {"memory_mb": 256, "cpu_limit": 0.5}


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {"ORCHESTRATOR_POOL_MEMORY_MB": "4096", **env},
        host_name="h1",
        wait_slice_seconds=0.05,
        lease_seconds=5,
    )


def request(**limits: Any) -> ToolExecutionRequest:
    return ToolExecutionRequest.model_validate(
        {
            "tool_name": "t",
            "session_id": "s1",
            "image": IMAGE,
            "command": ["sh", "-c", "echo hi"],
            "resource_limits": {**LIMITS, **limits},
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_pool(redis, engine: FakeEngine, clock: Clock) -> Iterator[Any]:
    engine.add_image(IMAGE, FakeProgram(run_seconds=None, on_exec=lambda spec: FakeExec()))
    made: list[WarmPool] = []

    def make(**env: str) -> WarmPool:
        rt = Runtime(settings(**env), redis, engine=engine)
        rt.pool = WarmPool(rt, clock=clock)
        made.append(rt.pool)
        return rt.pool

    yield make
    for pool in made:
        pool.drain()


def idle(pool: WarmPool, req: ToolExecutionRequest) -> set[str]:
    spec = pool.spec_for(req)
    assert spec is not None
    return {m.decode() for m in pool.rt.redis.smembers(keys.pool("h1", spec.key))}


def running_pool_containers(engine: FakeEngine) -> set[str]:
    return {c.id for c in engine.list_containers(["orchestrator.kind=pool"]) if c.running}


def arrive(pool: WarmPool, req: ToolExecutionRequest, count: int) -> list[str | None]:
    """``count`` runs asking for a container at once (each then used and discarded)."""
    taken = [pool.take(req) for _ in range(count)]
    for container_id in taken:
        if container_id is not None:
            pool.discard(container_id)
    return taken


def test_no_pool_and_no_container_before_any_demand(make_pool, engine):
    pool = make_pool()

    assert pool.size_pools().made == 0
    assert running_pool_containers(engine) == set()


def test_a_burst_grows_the_pool_and_the_next_burst_hits(make_pool, engine, clock):
    pool = make_pool()
    req = request()

    assert arrive(pool, req, 5) == [None] * 5  # first seen: every run goes cold
    clock.now += 0.5
    assert pool.size_pools().made == 5

    assert len(idle(pool, req)) == 5
    assert running_pool_containers(engine) == idle(pool, req)
    clock.now += 10
    taken = arrive(pool, req, 5)
    assert None not in taken and len(set(taken)) == 5  # all five served warm


def test_pools_shrink_to_nothing_when_demand_stops(make_pool, engine, clock):
    pool = make_pool()
    req = request()
    arrive(pool, req, 3)
    pool.size_pools()
    assert len(idle(pool, req)) == 3

    clock.now += 30  # within the keep-warm period: kept
    assert pool.size_pools().removed == 0
    clock.now += CONFIG.keep_warm_default_seconds
    report = pool.size_pools()

    assert report.removed == 3
    pool.drain()  # waits for the background removals
    assert idle(pool, req) == set()
    assert running_pool_containers(engine) == set()


def test_a_static_pool_keeps_its_minimum_without_demand_and_grows_with_it(make_pool, clock):
    spec = [{"image": IMAGE, "size": 2, **LIMITS}]
    pool = make_pool(ORCHESTRATOR_POOL=json.dumps(spec))
    req = request()

    assert pool.size_pools().made == 2
    arrive(pool, req, 6)  # two hits, four misses
    assert pool.size_pools().made == 6  # two replace the used ones, four more
    assert len(idle(pool, req)) == 6
    clock.now += CONFIG.keep_warm_max_seconds + 1
    pool.size_pools()
    assert len(idle(pool, req)) == 2  # back to the operator's minimum


def test_the_memory_budget_caps_the_idle_pools(make_pool, engine):
    pool = make_pool(ORCHESTRATOR_POOL_MEMORY_MB="1024")
    small, big = request(memory_mb=128), request(memory_mb=512)
    arrive(pool, small, 4)
    arrive(pool, big, 4)

    pool.size_pools()

    held = len(idle(pool, small)) * 128 + len(idle(pool, big)) * 512
    assert 0 < held <= 1024
    assert len(idle(pool, small)) >= 1 and len(idle(pool, big)) >= 1
    specs = [c.spec for c in engine.containers.values() if c.status == "running"]
    assert sum(s.memory_mb for s in specs) == held  # the engine holds what Redis says


def test_a_zero_budget_turns_adaptive_pools_off(make_pool, engine):
    pool = make_pool(ORCHESTRATOR_POOL_MEMORY_MB="0")
    req = request()

    assert arrive(pool, req, 4) == [None] * 4
    assert pool.size_pools().made == 0
    assert running_pool_containers(engine) == set()


def test_requests_a_pool_cannot_serve_make_no_demand(make_pool):
    pool = make_pool()
    default_pids = pool.rt.settings.default_pids_limit
    bridge = request().model_copy(update={"network_mode": "bridge"})

    assert demand_spec(bridge, default_pids) is None
    assert pool.take(bridge) is None
    assert pool.rt.redis.hlen(keys.pool_specs("h1")) == 0


def test_a_run_served_by_a_grown_pool_runs_there_once(make_pool, engine, clock):
    pool = make_pool()
    req = request()
    idles = engine.program_of(IMAGE)
    engine.add_image(IMAGE, FakeProgram(stdout=b"hi\n"))  # run as a cold container, it ends
    cold = run_execution(pool.rt, req, "e1")  # a miss: cold, and demand recorded
    engine.add_image(IMAGE, idles)  # a pool container idles until the tool is exec'd
    pool.size_pools()
    [warm_id] = idle(pool, req)
    clock.now += 1

    warm = run_execution(pool.rt, req, "e2")

    assert cold.status == warm.status == "succeeded"
    assert warm.container_id == warm_id
    assert pool.rt.executions.get("e2").pooled
    assert not pool.rt.executions.get("e2").made_now  # taken idle
    assert not pool.rt.executions.get("e1").pooled
    pool.drain()  # waits for the background removals
    assert engine.find_container(warm_id) is None  # used once, then discarded


# -- a miss on a busy worker: a container made for it, run through its agent ------------


def test_a_miss_on_a_busy_worker_runs_in_a_container_made_for_it(make_pool, engine):
    pool = make_pool()
    req = request()
    pool.run_started("orch-tool-other")  # another run of this worker goes on

    result = run_execution(pool.rt, req, "e1")

    assert result.status == "succeeded"
    entry = pool.rt.executions.get("e1")
    assert entry.pooled and entry.made_now  # through the agent (at most once), made for it
    made = engine.find_container(result.container_id or "")
    assert made is not None and made.labels["orchestrator.kind"] == "pool"
    assert engine.find_container("orch-tool-e1") is None  # no cold container
    assert idle(pool, req) == set()  # taken at once, never idle
    pool.run_ended("orch-tool-other")
    pool.drain()
    assert engine.find_container(result.container_id or "") is None  # used once


def test_a_miss_on_an_idle_worker_runs_cold(make_pool, engine):
    pool = make_pool()
    engine.add_image(IMAGE, FakeProgram(stdout=b"hi\n"))  # a cold container ends

    result = run_execution(pool.rt, request(), "e1")

    assert result.status == "succeeded" and result.stdout == "hi\n"
    assert not pool.rt.executions.get("e1").pooled
    assert [spec.name for (spec,) in engine.called("create_container")] == ["orch-tool-e1"]


def test_a_container_that_cannot_be_made_on_demand_sends_the_run_cold_and_backs_off(
    make_pool, engine, monkeypatch
):
    pool = make_pool()
    pool.run_started("orch-tool-other")
    made: list[str] = []
    real_make = pool._make

    def failing(spec):
        made.append(spec.key)
        raise DockerError("no room")

    monkeypatch.setattr(pool, "_make", failing)
    engine.add_image(IMAGE, FakeProgram(stdout=b"hi\n"))

    first = run_execution(pool.rt, request(), "e1")
    second = run_execution(pool.rt, request(), "e2")

    assert first.status == second.status == "succeeded"
    assert not pool.rt.executions.get("e1").pooled and not pool.rt.executions.get("e2").pooled
    assert len(made) == 1  # the second run did not try again: backing off
    monkeypatch.setattr(pool, "_make", real_make)
    pool.run_ended("orch-tool-other")
