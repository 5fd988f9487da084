"""Behaviour of leases, the execution and host registries, and the reaper, on fakeredis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.engine.fake import FakeEngine
from orchestrator.models import ToolExecutionResult
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.leases import LeaseKeeper
from orchestrator.state.registry import ExecutionEntry, ExecutionRegistry, HostRegistry, text
from orchestrator.worker.runtime import Runtime

# -- LeaseKeeper -------------------------------------------------------------------------------


def test_acquire_takes_a_free_lease_with_the_lease_ttl(redis):
    keeper = LeaseKeeper(redis, lease_seconds=20, owner="w1")

    assert keeper.acquire("e1") is True

    assert keeper.holder("e1") == "w1"
    assert 19_000 < redis.pttl(keys.lease("e1")) <= 20_000
    assert keeper.held == frozenset({"e1"})


def test_second_acquire_fails_while_the_lease_is_held(redis):
    first = LeaseKeeper(redis, 20, owner="w1")
    second = LeaseKeeper(redis, 20, owner="w2")
    first.acquire("e1")

    assert second.acquire("e1") is False
    assert first.acquire("e1") is False  # not re-entrant either
    assert second.held == frozenset()
    assert second.holder("e1") == "w1"


def test_default_owner_token_is_unique_per_keeper(redis):
    assert LeaseKeeper(redis, 20).owner != LeaseKeeper(redis, 20).owner


def test_holder_of_a_free_lease_is_none(redis):
    assert LeaseKeeper(redis, 20, owner="w1").holder("nobody") is None


def test_release_by_another_worker_leaves_the_lease_alone(redis):
    owner = LeaseKeeper(redis, 20, owner="w1")
    other = LeaseKeeper(redis, 20, owner="w2")
    owner.acquire("e1")

    other.release("e1")

    assert owner.holder("e1") == "w1"


def test_release_by_the_owner_frees_the_lease_for_others(redis):
    owner = LeaseKeeper(redis, 20, owner="w1")
    other = LeaseKeeper(redis, 20, owner="w2")
    owner.acquire("e1")

    owner.release("e1")

    assert owner.holder("e1") is None
    assert owner.held == frozenset()
    assert other.acquire("e1") is True
    assert other.holder("e1") == "w2"


def test_renew_all_extends_every_held_lease(redis):
    keeper = LeaseKeeper(redis, 20, owner="w1")
    keeper.acquire("e1")
    keeper.acquire("e2")
    redis.pexpire(keys.lease("e1"), 500)
    redis.pexpire(keys.lease("e2"), 500)

    keeper.renew_all()

    assert redis.pttl(keys.lease("e1")) > 19_000
    assert redis.pttl(keys.lease("e2")) > 19_000
    assert not keeper.lost("e1")
    assert not keeper.lost("e2")


def test_renew_all_flags_a_lease_taken_over_and_does_not_touch_it(redis):
    keeper = LeaseKeeper(redis, 20, owner="w1")
    keeper.acquire("e1")
    keeper.acquire("e2")
    redis.set(keys.lease("e1"), "intruder")  # our lease expired and someone else took it

    keeper.renew_all()

    assert keeper.lost("e1") is True
    assert keeper.lost("e2") is False
    assert keeper.holder("e1") == "intruder"
    assert redis.pttl(keys.lease("e1")) == -1  # the intruder's key was not given our TTL


def test_renew_all_takes_back_a_lease_that_lapsed_while_nobody_took_it(redis):
    keeper = LeaseKeeper(redis, 20, owner="w1")
    keeper.acquire("e1")
    redis.delete(keys.lease("e1"))  # Redis was down longer than the lease: it expired

    keeper.renew_all()

    assert keeper.lost("e1") is False
    assert keeper.holder("e1") == "w1"
    assert 19_000 < redis.pttl(keys.lease("e1")) <= 20_000
    assert LeaseKeeper(redis, 20, owner="w2").acquire("e1") is False


def test_a_lapsed_lease_of_a_live_worker_is_not_abandoned_until_that_worker_is_silent(redis):
    holder = LeaseKeeper(redis, 20, owner="w1")
    reaper = LeaseKeeper(redis, 20, owner="w2")
    holder.renew_all()  # a housekeeping round: w1 is alive
    holder.acquire("e1")
    redis.delete(keys.lease("e1"))  # lapsed (a Redis restart), w1 still runs it

    assert reaper.abandoned("e1") is False

    redis.delete(keys.worker_alive("w1"))  # w1 died: its liveness mark expired too

    assert reaper.abandoned("e1") is True


def test_a_released_lease_leaves_no_holder_note(redis):
    keeper = LeaseKeeper(redis, 20, owner="w1")
    keeper.renew_all()
    keeper.acquire("e1")

    keeper.release("e1")

    assert redis.exists(keys.last_holder("e1")) == 0
    assert keeper.abandoned("e1") is True


def test_releasing_a_lost_lease_does_not_delete_the_new_holders_key(redis):
    keeper = LeaseKeeper(redis, 20, owner="w1")
    keeper.acquire("e1")
    redis.set(keys.lease("e1"), "intruder")
    keeper.renew_all()

    keeper.release("e1")

    assert keeper.holder("e1") == "intruder"
    assert keeper.lost("e1") is False
    assert keeper.held == frozenset()


# -- ExecutionRegistry ---------------------------------------------------------------------------


def make_result(execution_id: str = "e1", status: str = "succeeded") -> ToolExecutionResult:
    return ToolExecutionResult(
        execution_id=execution_id,
        tool_name="grep",
        session_id="s1",
        status=status,
        exit_code=0,
        result={"matches": [1, 2]},
        stdout="out",
        started_at=datetime(2024, 1, 1, tzinfo=UTC),
        finished_at=datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC),
        duration_seconds=5.0,
        host="h1",
    )


def test_started_execution_is_stored_with_json_encoded_fields_and_is_in_flight(redis):
    registry = ExecutionRegistry(redis, ttl_seconds=120)

    registry.start("e1", {"host": "h1", "request": {"tool_name": "grep"}, "attempt": 1})

    assert redis.hgetall(keys.execution("e1")) == {
        b"host": b"h1",
        b"request": b'{"tool_name": "grep"}',
        b"attempt": b"1",
        b"state": b"running",
    }
    entry = registry.get("e1")
    assert (entry.known, entry.host, entry.state) == (True, "h1", "running")
    assert entry.request == '{"tool_name": "grep"}'
    assert registry.inflight() == ["e1"]
    assert 0 < redis.ttl(keys.execution("e1")) <= 120


def test_update_sets_fields_of_a_running_execution(redis):
    registry = ExecutionRegistry(redis, 120)
    registry.start("e1", {"host": "h1"})

    registry.update("e1", container_id="c0ffee", status="running")

    entry = registry.get("e1")
    assert entry.container_id == "c0ffee"
    assert entry.host == "h1"
    assert entry.state == "running"


def test_finished_execution_result_round_trips_and_leaves_the_in_flight_set(redis):
    registry = ExecutionRegistry(redis, 120)
    registry.start("e1", {"host": "h1"})
    registry.start("e2", {"host": "h1"})
    result = make_result("e1", status="oom_killed")

    registry.finish(result)

    assert registry.result("e1") == result
    assert registry.get("e1").finished
    assert registry.get("e1").status == "oom_killed"
    assert registry.inflight() == ["e2"]
    assert 0 < redis.ttl(keys.execution_result("e1")) <= 120


def test_unknown_execution_has_no_entry_and_no_result(redis):
    registry = ExecutionRegistry(redis, 120)

    assert registry.get("ghost") == ExecutionEntry()
    assert not registry.get("ghost").known
    assert registry.result("ghost") is None


def test_inflight_lists_ids_sorted(redis):
    registry = ExecutionRegistry(redis, 120)
    for execution_id in ["c", "a", "b"]:
        registry.start(execution_id, {})

    assert registry.inflight() == ["a", "b", "c"]


def test_forget_drops_an_execution_from_the_in_flight_set_without_a_result(redis):
    registry = ExecutionRegistry(redis, 120)
    registry.start("e1", {})

    registry.forget("e1")

    assert registry.inflight() == []
    assert registry.result("e1") is None
    assert registry.get("e1").state == "running"


def test_cancel_flag_is_seen_only_after_it_is_requested(redis):
    registry = ExecutionRegistry(redis, 120)

    assert registry.cancel_requested("e1") is False
    registry.request_cancel("e1")

    assert registry.cancel_requested("e1") is True
    assert registry.cancel_requested("e2") is False
    assert 0 < redis.ttl(keys.cancel("e1")) <= 120


def test_mark_requeued_succeeds_once_per_hold_period(redis):
    registry = ExecutionRegistry(redis, 120)

    assert registry.mark_requeued("e1", hold_seconds=60) is True
    assert registry.mark_requeued("e1", hold_seconds=60) is False
    assert registry.mark_requeued("e2", hold_seconds=60) is True
    assert 0 < redis.ttl(keys.requeued("e1")) <= 60


def test_mark_requeued_holds_at_least_one_second(redis):
    registry = ExecutionRegistry(redis, 120)

    assert registry.mark_requeued("e1", hold_seconds=0) is True
    assert redis.ttl(keys.requeued("e1")) == 1


@pytest.mark.parametrize(("raw", "expected"), [(None, None), (b"abc", "abc"), ("x", "x"), (5, "5")])
def test_text_decodes_redis_replies(raw, expected):
    assert text(raw) == expected


# -- HostRegistry --------------------------------------------------------------------------------


def test_beating_host_is_alive_and_listed_with_its_info(redis):
    hosts = HostRegistry(redis, ttl_seconds=20)

    hosts.beat("h1", {"queue": "host.h1", "concurrency": 8})

    assert hosts.alive("h1") is True
    assert hosts.live_hosts() == ["h1"]
    info = hosts.info("h1")
    assert info is not None
    assert info["queue"] == "host.h1"
    assert info["concurrency"] == 8
    assert isinstance(info["seen_at"], float)
    assert 0 < redis.ttl(keys.host("h1")) <= 20


def test_host_whose_heartbeat_expired_is_dead_and_not_listed(redis):
    hosts = HostRegistry(redis, 20)
    hosts.beat("h2", {})
    hosts.beat("h1", {})

    redis.delete(keys.host("h1"))  # what the TTL does after host_ttl_seconds of silence

    assert hosts.alive("h1") is False
    assert hosts.alive("h2") is True
    assert hosts.live_hosts() == ["h2"]
    assert hosts.info("h1") is None


def test_live_hosts_are_sorted_and_empty_without_heartbeats(redis):
    hosts = HostRegistry(redis, 20)
    assert hosts.live_hosts() == []

    for name in ["zeta", "alpha", "mu"]:
        hosts.beat(name, {})

    assert hosts.live_hosts() == ["alpha", "mu", "zeta"]


def test_unknown_host_is_not_alive(redis):
    assert HostRegistry(redis, 20).alive("never-seen") is False


# -- Runtime.reap_expired ------------------------------------------------------------------------


class Recorder:
    """Stands in for the tasks layer's enqueue: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    def __call__(self, execution_id: str, request: dict[str, Any], queue: str) -> None:
        self.calls.append((execution_id, request, queue))


REQUEST = {"tool_name": "grep", "session_id": "s1", "image": "busybox"}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def runtime(redis, recorder) -> Runtime:
    settings = Settings(host_name="reaper-host", lease_seconds=20)
    return Runtime(settings, redis, enqueue=recorder)


def start(runtime: Runtime, execution_id: str, host: str = "dead-host") -> None:
    runtime.executions.start(execution_id, {"host": host, "request": REQUEST})


def test_orphaned_execution_of_a_dead_host_is_re_enqueued_on_tools_once(runtime, recorder):
    start(runtime, "e1", host="dead-host")

    assert runtime.reap_expired() == ["e1"]
    assert runtime.reap_expired() == []

    assert recorder.calls == [("e1", REQUEST, "tools")]
    assert runtime.executions.inflight() == ["e1"]  # still in flight until the new run ends


def test_orphaned_execution_of_a_live_host_goes_back_to_that_hosts_queue(runtime, recorder):
    runtime.hosts.beat("live-host", {})
    start(runtime, "e1", host="live-host")

    assert runtime.reap_expired() == ["e1"]

    assert recorder.calls == [("e1", REQUEST, "host.live-host")]


def test_execution_without_a_host_is_re_enqueued_on_tools(runtime, recorder):
    runtime.executions.start("e1", {"request": REQUEST})

    runtime.reap_expired()

    assert recorder.calls == [("e1", REQUEST, "tools")]


def test_execution_is_not_re_enqueued_while_its_lease_is_held(runtime, recorder, redis):
    start(runtime, "e1")
    LeaseKeeper(redis, 20, owner="busy-worker").acquire("e1")

    assert runtime.reap_expired() == []

    assert recorder.calls == []
    assert runtime.executions.inflight() == ["e1"]


def test_execution_is_re_enqueued_after_its_lease_expires(runtime, recorder, redis):
    start(runtime, "e1")
    LeaseKeeper(redis, 20, owner="dying-worker").acquire("e1")
    assert runtime.reap_expired() == []

    redis.delete(keys.lease("e1"))  # the worker died and stopped renewing

    assert runtime.reap_expired() == ["e1"]
    assert [call[0] for call in recorder.calls] == ["e1"]


def test_requeue_happens_again_once_the_hold_expires(runtime, recorder, redis):
    start(runtime, "e1")
    runtime.reap_expired()
    assert 0 < redis.ttl(keys.requeued("e1")) <= 60  # lease_seconds * 3

    redis.delete(keys.requeued("e1"))

    assert runtime.reap_expired() == ["e1"]
    assert len(recorder.calls) == 2


def test_finished_execution_still_in_the_set_is_dropped_not_re_enqueued(runtime, recorder, redis):
    start(runtime, "e1")
    redis.hset(keys.execution("e1"), "state", "finished")

    assert runtime.reap_expired() == []

    assert recorder.calls == []
    assert runtime.executions.inflight() == []


def test_in_flight_id_whose_entry_expired_is_dropped(runtime, recorder, redis):
    redis.sadd(keys.INFLIGHT, "vanished")

    assert runtime.reap_expired() == []

    assert recorder.calls == []
    assert runtime.executions.inflight() == []


def test_entry_without_a_stored_request_is_kept_but_not_re_enqueued(runtime, recorder):
    runtime.executions.start("e1", {"host": "dead-host"})

    assert runtime.reap_expired() == []

    assert recorder.calls == []
    assert runtime.executions.inflight() == ["e1"]


def test_reaper_without_an_enqueue_callable_re_enqueues_nothing(redis):
    runtime = Runtime(Settings(host_name="h"), redis, enqueue=None)
    start(runtime, "e1")

    assert runtime.reap_expired() == []
    assert redis.exists(keys.requeued("e1")) == 0  # the requeue right was not used up


def test_reaper_handles_a_mix_of_executions_in_one_round(runtime, recorder, redis):
    runtime.hosts.beat("live-host", {})
    start(runtime, "orphan-dead", host="dead-host")
    start(runtime, "orphan-live", host="live-host")
    start(runtime, "leased")
    LeaseKeeper(redis, 20, owner="w").acquire("leased")
    start(runtime, "done")
    runtime.executions.finish(
        ToolExecutionResult(execution_id="done", tool_name="t", session_id="s1", status="failed")
    )

    assert runtime.reap_expired() == ["orphan-dead", "orphan-live"]

    assert sorted((c[0], c[2]) for c in recorder.calls) == [
        ("orphan-dead", "tools"),
        ("orphan-live", "host.live-host"),
    ]
    assert runtime.executions.inflight() == ["leased", "orphan-dead", "orphan-live"]


def test_heartbeat_makes_the_runtimes_host_alive(runtime):
    runtime.heartbeat()

    assert runtime.hosts.alive("reaper-host") is True
    assert runtime.hosts.info("reaper-host")["queue"] == "host.reaper-host"


def test_runtime_keeps_the_injected_engine(redis):
    engine = FakeEngine()

    assert Runtime(Settings(host_name="h"), redis, engine=engine).engine is engine


def test_requeued_request_is_the_stored_json_decoded(runtime, recorder, redis):
    start(runtime, "e1")

    runtime.reap_expired()

    ((_, request, _),) = recorder.calls
    assert request == json.loads(text(redis.hget(keys.execution("e1"), "request")) or "")
