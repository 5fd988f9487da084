"""Behaviour of the janitor: which sessions ended, which containers go and why, failing the
messages queued for a dead host, and one whole pass over a fake engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from orchestrator.core.specs import labels
from orchestrator.core.types import Container, ContainerSpec, Mount, NetworkSpec
from orchestrator.engine import hosts_file
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import DockerError, DockerUnavailable
from orchestrator.models import ToolExecutionResult
from orchestrator.settings import Settings
from orchestrator.state import keys, redis_broker
from orchestrator.state.subnets import SubnetPool
from orchestrator.worker import janitor
from orchestrator.worker.janitor import drain_dead_host_queues, expired_sessions, reap_host
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
NOW = 1_900_000_000.0
HOUR = 3600.0
MAX_LIFETIME = 86400.0
#: An image whose containers run until stopped (busybox:latest exits at once).
SLEEPER = "sleeper:latest"
PREDEFINED = {n.name for n in FakeEngine().list_networks()}


@pytest.fixture
def rt(redis, engine: FakeEngine) -> Runtime:
    engine.add_image(SLEEPER, FakeProgram(run_seconds=None))
    return Runtime(SETTINGS, redis, engine=engine)


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


def tool(name: str, deadline: float, session_id: str = "s1", **extra: str) -> ContainerSpec:
    """A tool container (its process exits at once)."""
    return ContainerSpec(
        name=name,
        image="busybox:latest",
        labels=labels("tool", session_id, deadline, "h1", **extra),
    )


def relic(name: str, session_id: str, deadline: float, network: str = "none") -> ContainerSpec:
    """A relic container (it runs until stopped)."""
    return ContainerSpec(
        name=name,
        image=SLEEPER,
        labels=labels("relic", session_id, deadline, "h1", relic="r1", relic_name="db"),
        network=network,
    )


def inspected(spec: ContainerSpec, status: str = "running") -> Container:
    """What the engine would say of a container made from ``spec``."""
    return Container(
        id="c" * 64, name=spec.name, image=spec.image, labels=spec.labels, status=status
    )


def run(engine: FakeEngine, spec: ContainerSpec) -> Container:
    """Create and start a container from ``spec``."""
    created = engine.create_container(spec)
    engine.start_container(created.id)
    return engine.inspect_container(created.id)


def before(
    monkeypatch: pytest.MonkeyPatch,
    engine: FakeEngine,
    method: str,
    ref: str,
    action: Callable[[], Any],
) -> None:
    """Run ``action`` right before ``engine.<method>`` acts on ``ref`` (an id or a name)."""
    original = getattr(engine, method)

    def wrapped(target: str, *args: Any, **kwargs: Any) -> Any:
        if target == ref:
            action()
        return original(target, *args, **kwargs)

    monkeypatch.setattr(engine, method, wrapped)


def container_names(engine: FakeEngine) -> list[str]:
    return sorted(c.name for c in engine.list_containers())


def network_names(engine: FakeEngine) -> list[str]:
    """The networks besides the engine's own (``bridge``, ``host``, ``none``: always kept)."""
    assert engine.find_network("bridge") is not None
    return sorted(n.name for n in engine.list_networks() if n.name not in PREDEFINED)


def volume_names(engine: FakeEngine) -> list[str]:
    return sorted(v.name for v in engine.list_volumes())


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


def verdict(rt, spec: ContainerSpec, ended=None):
    return janitor._container_verdict(rt, inspected(spec), NOW, ended or {})


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
    assert verdict(rt, ContainerSpec(name="stranger", image="busybox:latest", labels={})) is None


def test_a_container_with_an_unreadable_deadline_is_judged_by_its_other_labels(rt):
    spec = tool("c", NOW + HOUR, execution="e1")
    garbled = replace(spec, labels={**spec.labels, "orchestrator.deadline": "soon"})
    assert verdict(rt, garbled) is None
    finished(rt, "e1")
    assert verdict(rt, garbled) == "its execution has a final result"


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


def network(engine: FakeEngine, name: str, labels: dict[str, str], created: float) -> None:
    """A network created at unix time ``created``."""
    made = engine.create_network(NetworkSpec(name, labels))
    engine.networks[made.id] = replace(made, created_at=datetime.fromtimestamp(created, UTC))


@pytest.fixture
def day_of_work(rt, redis, engine) -> SubnetPool:
    """A host after a day of work: stale and live containers, networks and volumes."""
    session(redis, "old", created_at=NOW - 3 * HOUR, expires_at=NOW - HOUR)
    session(redis, "live", created_at=NOW - HOUR, expires_at=NOW + HOUR)
    finished(rt, "e-done", "live")
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("old")
    pool.allocate("gone")
    pool.allocate("live")
    long_ago = NOW - HOUR
    network(engine, "session_old", managed("old"), long_ago)
    network(engine, "session_gone", managed("gone"), long_ago)
    network(engine, "session_new", managed("new"), NOW - 5)
    network(engine, "session_live", managed("live"), long_ago)
    run(engine, tool("orch-tool-late", NOW - 1, "live", execution="e-late"))
    run(engine, tool("orch-tool-done", NOW + HOUR, "live", execution="e-done"))
    run(engine, tool("orch-tool-busy", NOW + HOUR, "live", execution="e-busy"))
    run(engine, tool("orch-tool-kept", NOW + HOUR, "live", execution="e-done", keep="true"))
    run(engine, relic("orch-relic-old-db", "old", deadline=NOW + HOUR))
    run(engine, relic("orch-relic-live-db", "live", NOW - HOUR, network="session_live"))
    run(engine, ContainerSpec(name="someone-elses", image="busybox:latest", labels={}))
    engine.create_volume("orch-old-data", managed("old"))
    engine.create_volume("orch-gone-data", managed("gone"))
    engine.create_volume("orch-live-data", managed("live"))
    engine.create_volume("someone-elses-data", {})
    return pool


def test_a_janitor_pass_removes_what_is_stale_and_nothing_else(rt, engine, day_of_work):
    report = reap_host(rt, now=NOW, network_grace_seconds=60)

    assert sorted((c["name"], c["reason"]) for c in report["containers_removed"]) == [
        ("orch-relic-old-db", "session old ended (ttl)"),
        ("orch-tool-done", "its execution has a final result"),
        ("orch-tool-late", "past its deadline"),
    ]
    assert container_names(engine) == [
        "orch-relic-live-db",
        "orch-tool-busy",
        "orch-tool-kept",
        "someone-elses",
    ]
    assert report["sessions_ended"] == {"old": "ttl"}
    assert report["networks_removed"] == 2
    assert network_names(engine) == ["session_live", "session_new"]
    assert report["volumes_removed"] == 2
    assert volume_names(engine) == ["orch-live-data", "someone-elses-data"]
    assert report["errors"] == []
    assert report["host"] == "h1"


def test_a_janitor_pass_gives_back_the_subnets_of_removed_networks(rt, day_of_work):
    reap_host(rt, now=NOW, network_grace_seconds=60)

    assert day_of_work.current("old") is None
    assert day_of_work.current("gone") is None
    assert day_of_work.current("live") is not None


def test_a_janitor_pass_collects_engine_errors_and_goes_on(rt, engine, monkeypatch):
    stuck = run(engine, tool("orch-tool-stuck", NOW - 1, execution="e1"))
    vanished = run(engine, tool("orch-tool-vanished", NOW - 1, execution="e2"))
    run(engine, tool("orch-tool-late", NOW - 1, execution="e3"))

    def refuse() -> None:
        raise DockerError("remove container orch-tool-stuck: removal is already in progress")

    before(monkeypatch, engine, "remove_container", stuck.id, refuse)
    before(
        monkeypatch,
        engine,
        "remove_container",
        vanished.id,
        lambda: FakeEngine.remove_container(engine, vanished.id),
    )

    report = reap_host(rt, now=NOW)

    assert [c["name"] for c in report["containers_removed"]] == ["orch-tool-late"]
    [error] = report["errors"]
    assert error.startswith("h1: orch-tool-stuck: ")
    assert "already in progress" in error


def test_a_janitor_pass_completes_when_a_container_vanishes_while_it_lists(rt, engine):
    """Docker lists, then inspects each container: one removed in between is left out."""
    run(engine, tool("orch-tool-a", NOW - 1, execution="e1"))
    vanishing = run(engine, tool("orch-tool-b", NOW - 1, execution="e2"))
    run(engine, tool("orch-tool-c", NOW - 1, execution="e3"))
    vanish = [vanishing.id]

    def remove_one() -> None:  # between the engine's listing and its inspections
        if vanish:
            FakeEngine.remove_container(engine, vanish.pop())

    engine.on_list = remove_one

    report = reap_host(rt, now=NOW)

    assert vanish == []  # the hook did run, during the pass
    assert sorted((c["name"], c["reason"]) for c in report["containers_removed"]) == [
        ("orch-tool-a", "past its deadline"),
        ("orch-tool-c", "past its deadline"),
    ]
    assert report["errors"] == []
    assert container_names(engine) == []


def test_volumes_of_gone_sessions_in_use_are_kept_without_error(rt, engine):
    engine.create_volume("orch-gone-data", managed("gone"))
    run(
        engine,
        ContainerSpec(
            name="user",
            image="busybox:latest",
            labels={},
            mounts=(Mount("orch-gone-data", "/data"),),
        ),
    )

    report = reap_host(rt, now=NOW)

    assert report["volumes_removed"] == 0
    assert report["errors"] == []
    assert volume_names(engine) == ["orch-gone-data"]


def test_an_engine_that_cannot_list_fails_the_pass(rt, engine):
    engine.fail_next("list_containers", DockerUnavailable("list containers: engine unreachable"))

    with pytest.raises(DockerUnavailable):
        reap_host(rt, now=NOW)


def test_a_second_janitor_pass_finds_nothing_more_to_do(rt, day_of_work):
    reap_host(rt, now=NOW, network_grace_seconds=60)

    again = reap_host(rt, now=NOW, network_grace_seconds=60)

    assert again["containers_removed"] == []
    assert again["volumes_removed"] == 0
    assert again["networks_removed"] == 0


def hosts_writer(engine: FakeEngine, name: str) -> Container:
    """What :mod:`orchestrator.engine.hosts_file` creates (and never starts)."""
    spec = ContainerSpec(name=name, image=SLEEPER, labels={hosts_file.LABEL: "true"})
    return engine.create_container(spec)


def test_an_etc_hosts_writer_a_killed_worker_left_goes(rt, engine):
    hosts_writer(engine, "left-behind")

    report = reap_host(rt, now=NOW)  # long after it was made

    assert report["containers_removed"] == [
        {"name": "left-behind", "reason": "an /etc/hosts writer left behind"}
    ]
    assert engine.list_containers() == []


def test_an_etc_hosts_writer_at_work_stays(rt, engine):
    hosts_writer(engine, "writing")

    report = reap_host(rt, now=time.time())  # made a moment ago: a worker writes through it

    assert report["containers_removed"] == []
    assert [c.name for c in engine.list_containers()] == ["writing"]
