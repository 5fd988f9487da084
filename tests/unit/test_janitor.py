"""Behaviour of the janitor: which sessions ended, which containers go and why, failing the
messages queued for a dead host, and one whole pass over a fake engine."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from orchestrator.core.specs import labels
from orchestrator.models import ToolExecutionResult
from orchestrator.settings import Settings
from orchestrator.state import keys, redis_broker
from orchestrator.worker import janitor
from orchestrator.worker.janitor import drain_dead_host_queues, expired_sessions, reap_host
from orchestrator.worker.networks import SubnetPool
from orchestrator.worker.runtime import Runtime
from tests.unit.fakes import (
    FakeContainer,
    FakeNetwork,
    FakeVolume,
    not_found,
    server_error,
)

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
NOW = 1_900_000_000.0
HOUR = 3600.0
MAX_LIFETIME = 86400.0


@pytest.fixture
def rt(redis, docker) -> Runtime:
    return Runtime(SETTINGS, redis, docker_client=docker)


def session(redis, session_id: str, created_at: float, expires_at: float) -> None:
    redis.hset(
        keys.session_expiry(session_id),
        mapping={"created_at": created_at, "expires_at": expires_at},
    )
    redis.sadd(keys.SESSIONS, session_id)


def finished(rt: Runtime, execution_id: str, session_id: str = "s1") -> None:
    rt.executions.finish(
        ToolExecutionResult(
            execution_id=execution_id, tool_name="t", session_id=session_id, status="succeeded"
        )
    )


def tool(name: str, deadline: float, session_id: str = "s1", **extra: str) -> FakeContainer:
    return FakeContainer(
        name, labels=labels("tool", session_id, deadline, "h1", **extra), status="exited"
    )


def relic(name: str, session_id: str, deadline: float) -> FakeContainer:
    return FakeContainer(
        name,
        labels=labels("relic", session_id, deadline, "h1", relic="r1", relic_name="db"),
        status="running",
        run_seconds=None,
    )


# -- expired_sessions ----------------------------------------------------------------------


def test_a_session_whose_keepalive_lapsed_ended_by_its_ttl(redis):
    session(redis, "s1", created_at=NOW - 2 * HOUR, expires_at=NOW - 1)

    assert expired_sessions(redis, NOW, MAX_LIFETIME) == {"s1": "ttl"}


def test_a_session_capped_by_the_hard_maximum_ended_by_max_lifetime(redis):
    created = NOW - MAX_LIFETIME - 10
    session(redis, "s1", created_at=created, expires_at=created + MAX_LIFETIME)

    assert expired_sessions(redis, NOW, MAX_LIFETIME) == {"s1": "max_lifetime"}


def test_sessions_still_alive_or_without_times_have_not_ended(redis):
    session(redis, "alive", created_at=NOW - HOUR, expires_at=NOW + 60)
    redis.sadd(keys.SESSIONS, "no-times")

    assert expired_sessions(redis, NOW, MAX_LIFETIME) == {}


def test_each_ended_session_gets_its_own_reason(redis):
    session(redis, "idle", created_at=NOW - HOUR, expires_at=NOW - 5)
    session(redis, "old", created_at=NOW - 2 * MAX_LIFETIME, expires_at=NOW - MAX_LIFETIME)
    session(redis, "alive", created_at=NOW, expires_at=NOW + HOUR)

    assert expired_sessions(redis, NOW, MAX_LIFETIME) == {"idle": "ttl", "old": "max_lifetime"}


# -- _container_verdict --------------------------------------------------------------------


def verdict(rt, container, ended=None):
    return janitor._container_verdict(rt, container, NOW, ended or {})


def test_a_container_past_its_deadline_label_goes(rt):
    assert verdict(rt, tool("c", NOW - 1, execution="e1")) == "past its deadline"


def test_a_tool_container_of_a_finished_execution_goes(rt):
    finished(rt, "e1")

    assert verdict(rt, tool("c", NOW + HOUR, execution="e1")) == (
        "its execution has a final result"
    )


def test_a_tool_container_whose_execution_still_runs_stays(rt):
    assert verdict(rt, tool("c", NOW + HOUR, execution="e1")) is None


def test_a_finished_tool_container_stays_while_a_worker_holds_the_lease(rt):
    finished(rt, "e1")
    rt.leases.acquire("e1")

    assert verdict(rt, tool("c", NOW + HOUR, execution="e1")) is None


def test_a_tool_container_kept_with_cleanup_false_stays_until_its_deadline(rt):
    finished(rt, "e1")

    assert verdict(rt, tool("c", NOW + HOUR, execution="e1", keep="true")) is None
    assert verdict(rt, tool("c", NOW - 1, execution="e1", keep="true")) == "past its deadline"


def test_a_relic_of_a_session_kept_alive_stays_past_its_old_deadline_label(rt, redis):
    session(redis, "s1", created_at=NOW - HOUR, expires_at=NOW + HOUR)

    assert verdict(rt, relic("r", "s1", deadline=NOW - 30 * 60)) is None


def test_a_relic_of_a_session_past_its_expiry_goes(rt, redis):
    session(redis, "s1", created_at=NOW - HOUR, expires_at=NOW - 1)

    assert verdict(rt, relic("r", "s1", deadline=NOW + HOUR)) == "past its deadline"


def test_a_relic_without_session_times_falls_back_to_its_label(rt):
    assert verdict(rt, relic("r", "s1", deadline=NOW - 1)) == "past its deadline"
    assert verdict(rt, relic("r", "s1", deadline=NOW + 1)) is None


def test_every_container_of_an_ended_session_goes_with_the_reason(rt):
    container = relic("r", "s1", deadline=NOW + HOUR)

    assert verdict(rt, container, ended={"s1": "max_lifetime"}) == (
        "session s1 ended (max_lifetime)"
    )


def test_a_container_without_labels_stays(rt):
    assert verdict(rt, FakeContainer("stranger")) is None


# -- drain_dead_host_queues ---------------------------------------------------------------


def celery_message(task_id: str) -> str:
    """A message as kombu's Redis transport stores it (Celery protocol 2)."""
    return json.dumps(
        {
            "body": "W1tdLCB7fSwge31d",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "orchestrator.tools.execute", "id": task_id},
            "properties": {"delivery_tag": f"tag-{task_id}", "priority": 0},
        }
    )


class Failures:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, task_id: str, message: str) -> None:
        self.calls.append((task_id, message))


def test_messages_queued_for_a_dead_host_are_failed_with_a_clear_message(rt, redis):
    broker = fakeredis.FakeRedis()
    rt.hosts.beat("alive", {})
    redis.sadd(keys.HOSTS, "ghost")  # known, but its heartbeat expired
    for task_id in ("t1", "t2"):
        broker.lpush("host.ghost", celery_message(task_id))  # kombu LPUSHes, workers BRPOP
    broker.lpush("host.ghost\x06\x163", celery_message("t3"))
    broker.lpush("host.ghost\x06\x169", "not json at all")
    broker.lpush("host.alive", celery_message("t4"))
    fail = Failures()

    failed = drain_dead_host_queues(rt, broker, fail)

    assert failed == ["t1", "t2", "t3"]
    assert [task_id for task_id, _ in fail.calls] == ["t1", "t2", "t3"]
    assert "'ghost' has no live worker" in fail.calls[0][1]
    for queue in redis_broker.queue_lists("host.ghost"):
        assert broker.llen(queue) == 0
    assert broker.llen("host.alive") == 1


def test_nothing_is_drained_while_every_host_is_alive(rt):
    broker = fakeredis.FakeRedis()
    rt.hosts.beat("h1", {})
    broker.lpush("host.h1", celery_message("t1"))
    fail = Failures()

    assert drain_dead_host_queues(rt, broker, fail) == []
    assert fail.calls == []
    assert broker.llen("host.h1") == 1


def test_a_host_silent_for_three_heartbeat_ttls_is_dead(rt, redis):
    broker = fakeredis.FakeRedis()
    rt.hosts.beat("h2", {})
    redis.delete(keys.host("h2"))  # its TTL ran out...
    silent = 3 * SETTINGS.host_ttl_seconds + 1
    redis.hset(keys.HOSTS_LAST_SEEN, "h2", time.time() - silent)  # ...a while ago
    broker.lpush("host.h2", celery_message("t1"))

    assert drain_dead_host_queues(rt, broker, Failures()) == ["t1"]


def test_a_host_that_only_just_missed_its_heartbeat_is_not_drained_yet(rt, redis):
    broker = fakeredis.FakeRedis()
    rt.hosts.beat("h2", {})
    redis.delete(keys.host("h2"))  # a worker restarting: the next one beats soon
    broker.lpush("host.h2", celery_message("t1"))
    fail = Failures()

    assert drain_dead_host_queues(rt, broker, fail) == []
    assert fail.calls == []
    assert broker.llen("host.h2") == 1


# -- reap_host end to end ------------------------------------------------------------------


MANAGED = {"orchestrator.managed": "true"}


def managed(session_id: str, **extra: str) -> dict[str, str]:
    return {**MANAGED, "orchestrator.session": session_id, **extra}


@pytest.fixture
def engine(rt, redis, docker):
    """A host after a day of work: stale and live containers, networks and volumes."""
    session(redis, "old", created_at=NOW - 3 * HOUR, expires_at=NOW - HOUR)
    session(redis, "live", created_at=NOW - HOUR, expires_at=NOW + HOUR)
    finished(rt, "e-done", "live")
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("old")
    pool.allocate("gone")
    pool.allocate("live")
    add = docker.containers.add
    add(tool("orch-tool-late", NOW - 1, "live", execution="e-late"))
    add(tool("orch-tool-done", NOW + HOUR, "live", execution="e-done"))
    add(tool("orch-tool-busy", NOW + HOUR, "live", execution="e-busy"))
    add(tool("orch-tool-kept", NOW + HOUR, "live", execution="e-done", keep="true"))
    add(relic("orch-relic-old-db", "old", deadline=NOW + HOUR))
    add(relic("orch-relic-live-db", "live", deadline=NOW - HOUR))
    add(FakeContainer("someone-elses", status="exited"))
    long_ago = NOW - HOUR
    nets = docker.networks
    nets.add(FakeNetwork("session_old", labels=managed("old"), created=long_ago))
    nets.add(FakeNetwork("session_gone", labels=managed("gone"), created=long_ago))
    nets.add(FakeNetwork("session_new", labels=managed("new"), created=NOW - 5))
    nets.add(
        FakeNetwork(
            "session_live",
            labels=managed("live"),
            created=long_ago,
            containers={"abc": {"Name": "orch-relic-live-db"}},
        )
    )
    nets.add(FakeNetwork("bridge", created=long_ago))
    vols = docker.volumes
    vols.add(FakeVolume("orch-old-data", labels=managed("old")))
    vols.add(FakeVolume("orch-gone-data", labels=managed("gone")))
    vols.add(FakeVolume("orch-live-data", labels=managed("live")))
    vols.add(FakeVolume("someone-elses-data"))
    return pool


def test_a_janitor_pass_removes_what_is_stale_and_nothing_else(rt, docker, engine):
    report = reap_host(rt, now=NOW, network_grace_seconds=60)

    assert sorted((c["name"], c["reason"]) for c in report["containers_removed"]) == [
        ("orch-relic-old-db", "session old ended (ttl)"),
        ("orch-tool-done", "its execution has a final result"),
        ("orch-tool-late", "past its deadline"),
    ]
    assert docker.containers.names == [
        "orch-relic-live-db",
        "orch-tool-busy",
        "orch-tool-kept",
        "someone-elses",
    ]
    assert report["sessions_ended"] == {"old": "ttl"}
    assert report["networks_removed"] == 2
    assert docker.networks.names == ["bridge", "session_live", "session_new"]
    assert report["volumes_removed"] == 2
    assert docker.volumes.names == ["orch-live-data", "someone-elses-data"]
    assert report["errors"] == []
    assert report["host"] == "h1"


def test_a_janitor_pass_gives_back_the_subnets_of_removed_networks(rt, engine):
    reap_host(rt, now=NOW, network_grace_seconds=60)

    assert engine.current("old") is None
    assert engine.current("gone") is None
    assert engine.current("live") is not None


def test_a_janitor_pass_collects_engine_errors_and_goes_on(rt, docker):
    stuck = docker.containers.add(tool("orch-tool-stuck", NOW - 1, execution="e1"))
    stuck.remove_error = server_error("removal of container is already in progress")
    vanished = docker.containers.add(tool("orch-tool-vanished", NOW - 1, execution="e2"))
    vanished.remove_error = not_found("orch-tool-vanished")
    docker.containers.add(tool("orch-tool-late", NOW - 1, execution="e3"))

    report = reap_host(rt, now=NOW)

    assert [c["name"] for c in report["containers_removed"]] == ["orch-tool-late"]
    [error] = report["errors"]
    assert error.startswith("h1: orch-tool-stuck: ")
    assert "already in progress" in error


def test_a_second_janitor_pass_finds_nothing_more_to_do(rt, engine):
    reap_host(rt, now=NOW, network_grace_seconds=60)

    again = reap_host(rt, now=NOW, network_grace_seconds=60)

    assert again["containers_removed"] == []
    assert again["volumes_removed"] == 0
    assert again["networks_removed"] == 0
