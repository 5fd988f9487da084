"""Behaviour of session cleanup: the per-host steps on a fake engine (stop, remove
containers, volumes, network) and the merge that clears the session from the registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from orchestrator.core.types import Container, ContainerSpec, Mount, NetworkSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import DockerError
from orchestrator.models import RelicStartRequest
from orchestrator.settings import Settings
from orchestrator.state import keys, sessions
from orchestrator.state.subnets import SubnetPool
from orchestrator.worker import relics
from orchestrator.worker.cleanup import (
    GRACE_SECONDS,
    merge_reports,
    new_host_report,
    remove_containers,
    remove_empty_networks,
    remove_network,
    remove_volumes,
    stop_containers,
)
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
#: An image whose containers run until stopped (busybox:latest exits at once).
SLEEPER = "sleeper:latest"
PREDEFINED = {n.name for n in FakeEngine().list_networks()}


@pytest.fixture
def rt(redis, engine: FakeEngine) -> Runtime:
    engine.add_image(SLEEPER, FakeProgram(run_seconds=None))
    return Runtime(SETTINGS, redis, engine=engine)


def session_labels(session_id: str) -> dict[str, str]:
    return {"orchestrator.managed": "true", "orchestrator.session": session_id}


def member(
    engine: FakeEngine,
    name: str,
    session_id: str = "s1",
    *,
    running: bool = True,
    network: str = "none",
    mounts: tuple[Mount, ...] = (),
) -> Container:
    """A started container of the session: running, or already exited."""
    spec = ContainerSpec(
        name=name,
        image=SLEEPER if running else "busybox:latest",
        labels=session_labels(session_id),
        network=network,
        mounts=mounts,
    )
    created = engine.create_container(spec)
    engine.start_container(created.id)
    return engine.inspect_container(created.id)


def status(engine: FakeEngine, container: Container) -> str:
    return engine.inspect_container(container.id).status


def container_names(engine: FakeEngine) -> list[str]:
    return sorted(c.name for c in engine.list_containers())


def network_names(engine: FakeEngine) -> list[str]:
    """The networks besides the engine's own (``bridge``, ``host``, ``none``: always kept)."""
    assert engine.find_network("bridge") is not None
    return sorted(n.name for n in engine.list_networks() if n.name not in PREDEFINED)


def volume_names(engine: FakeEngine) -> list[str]:
    return sorted(v.name for v in engine.list_volumes())


def session_network(engine: FakeEngine, session_id: str) -> None:
    engine.create_network(NetworkSpec(f"session_{session_id}", session_labels(session_id)))


def before(
    monkeypatch: pytest.MonkeyPatch,
    engine: FakeEngine,
    method: str,
    ref: str,
    action: Callable[[], Any],
) -> None:
    """Run ``action`` right before ``engine.<method>`` acts on ``ref`` (an id or a name).

    ``fail_next`` picks no target, and the cleanup steps work on containers in parallel.
    """
    original = getattr(engine, method)

    def wrapped(target: str, *args: Any, **kwargs: Any) -> Any:
        if target == ref:
            action()
        return original(target, *args, **kwargs)

    monkeypatch.setattr(engine, method, wrapped)


def raising(error: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise error

    return action


def report_for(rt, force: bool = True, keep_volumes: bool = False) -> dict:
    return new_host_report(rt, "s1", force, keep_volumes)


def test_a_new_host_report_starts_empty(rt):
    assert report_for(rt, force=False, keep_volumes=True) == {
        "session_id": "s1",
        "host": "h1",
        "force": False,
        "keep_volumes": True,
        "containers_removed": 0,
        "networks_removed": 0,
        "volumes_removed": 0,
        "errors": [],
    }


# -- stop_containers ---------------------------------------------------------------------


def test_force_kills_every_running_container_of_the_session(rt, engine):
    a = member(engine, "tool-a")
    b = member(engine, "tool-b")
    done = member(engine, "done", running=False)
    other = member(engine, "other", session_id="s2")

    report = stop_containers(rt, report_for(rt, force=True))

    assert sorted(engine.called("kill_container")) == sorted([(a.id, "SIGKILL"), (b.id, "SIGKILL")])
    assert engine.called("stop_container") == []
    assert report["errors"] == []
    assert status(engine, a) == status(engine, b) == "exited"
    assert status(engine, other) == "running"
    assert status(engine, done) == "exited"


def test_without_force_containers_are_stopped_with_the_grace_period(rt, engine):
    a = member(engine, "tool-a")

    stop_containers(rt, report_for(rt, force=False))

    assert engine.called("stop_container") == [(a.id, GRACE_SECONDS)]
    assert engine.called("kill_container") == []
    assert status(engine, a) == "exited"


def test_stop_errors_are_collected_and_the_others_still_stop(rt, engine, monkeypatch):
    stuck = member(engine, "stuck")
    gone = member(engine, "gone")
    raced = member(engine, "raced")
    fine = member(engine, "fine")
    before(
        monkeypatch, engine, "kill_container", stuck.id, raising(DockerError("permission denied"))
    )
    # Listed while running, then removed / exited by someone else before the kill.
    before(monkeypatch, engine, "kill_container", gone.id, lambda: engine.remove_container(gone.id))
    before(
        monkeypatch,
        engine,
        "kill_container",
        raced.id,
        lambda: FakeEngine.kill_container(engine, raced.id),
    )

    report = stop_containers(rt, report_for(rt, force=True))

    assert status(engine, fine) == "exited"
    [error] = report["errors"]
    assert error.startswith("h1: stop stuck: ")
    assert "permission denied" in error


def test_a_graceful_stop_of_a_container_removed_meanwhile_is_no_error(rt, engine, monkeypatch):
    gone = member(engine, "gone")
    before(monkeypatch, engine, "stop_container", gone.id, lambda: engine.remove_container(gone.id))

    report = stop_containers(rt, report_for(rt, force=False))

    assert report["errors"] == []


def test_a_failed_listing_is_reported_not_raised(rt, engine):
    engine.fail_next("list_containers", DockerError("list containers: engine is shutting down"))

    report = stop_containers(rt, report_for(rt))

    assert len(report["errors"]) == 1
    assert report["errors"][0].startswith("h1: list containers: ")
    assert "shutting down" in report["errors"][0]


# -- remove_containers ---------------------------------------------------------------------


def test_every_container_of_the_session_is_removed_and_counted(rt, engine):
    running = member(engine, "running")
    member(engine, "exited", running=False)
    member(engine, "other", session_id="s2")

    report = remove_containers(rt, report_for(rt))

    assert report["containers_removed"] == 2
    assert container_names(engine) == ["other"]
    assert (running.id,) in engine.called("remove_container")


def test_removal_errors_are_collected_and_vanished_containers_not_counted(rt, engine, monkeypatch):
    busy = member(engine, "busy")
    vanished = member(engine, "vanished")
    member(engine, "fine")
    error = DockerError("remove container busy: device or resource busy")
    before(monkeypatch, engine, "remove_container", busy.id, raising(error))
    before(
        monkeypatch,
        engine,
        "remove_container",
        vanished.id,
        lambda: FakeEngine.remove_container(engine, vanished.id),
    )

    report = remove_containers(rt, report_for(rt))

    assert report["containers_removed"] == 1
    assert len(report["errors"]) == 1
    assert report["errors"][0].startswith("h1: remove busy: ")
    assert "resource busy" in report["errors"][0]
    assert container_names(engine) == ["busy"]


def test_removal_adds_to_the_count_already_in_the_report(rt, engine):
    member(engine, "tool-a")
    report = report_for(rt)
    report["containers_removed"] = 3

    assert remove_containers(rt, report)["containers_removed"] == 4


def test_a_failed_removal_listing_is_reported_not_raised(rt, engine):
    member(engine, "tool-a")
    engine.fail_next("list_containers", DockerError("list containers: engine is shutting down"))

    report = remove_containers(rt, report_for(rt))

    assert report["containers_removed"] == 0
    [error] = report["errors"]
    assert error.startswith("h1: list containers: ")
    assert container_names(engine) == ["tool-a"]


# -- containers vanishing while the steps list them -----------------------------------------


def test_stop_and_remove_complete_when_a_container_vanishes_mid_list(rt, engine):
    a = member(engine, "tool-a")
    b = member(engine, "tool-b")
    c = member(engine, "tool-c")
    vanish = [b.id]

    def remove_one() -> None:  # between the engine's listing and its inspections
        if vanish:
            FakeEngine.remove_container(engine, vanish.pop())

    engine.on_list = remove_one

    report = stop_containers(rt, report_for(rt, force=True))
    assert report["errors"] == []
    assert sorted(ref for ref, _ in engine.called("kill_container")) == sorted([a.id, c.id])

    vanish.append(c.id)
    report = remove_containers(rt, report)

    assert report["errors"] == []
    assert report["containers_removed"] == 1
    assert container_names(engine) == []


# -- remove_volumes ------------------------------------------------------------------------


def test_the_session_volumes_are_removed(rt, engine):
    engine.create_volume("orch-s1-data", session_labels("s1"))
    engine.create_volume("orch-s1-cache", session_labels("s1"))
    engine.create_volume("orch-s2-data", session_labels("s2"))

    report = remove_volumes(rt, report_for(rt))

    assert report["volumes_removed"] == 2
    assert volume_names(engine) == ["orch-s2-data"]
    assert sorted(engine.called("remove_volume")) == [("orch-s1-cache",), ("orch-s1-data",)]


def test_keep_volumes_leaves_them_alone(rt, engine):
    engine.create_volume("orch-s1-data", session_labels("s1"))

    report = remove_volumes(rt, report_for(rt, keep_volumes=True))

    assert report["volumes_removed"] == 0
    assert volume_names(engine) == ["orch-s1-data"]
    assert engine.called("remove_volume") == []


def test_a_volume_in_use_is_reported(rt, engine):
    engine.create_volume("orch-s1-data", session_labels("s1"))
    member(engine, "user", session_id="s2", mounts=(Mount("orch-s1-data", "/data"),))

    report = remove_volumes(rt, report_for(rt))

    assert report["volumes_removed"] == 0
    assert report["errors"][0].startswith("h1: remove volume orch-s1-data: ")
    assert "in use" in report["errors"][0]
    assert volume_names(engine) == ["orch-s1-data"]


def test_a_volume_removed_meanwhile_is_neither_counted_nor_an_error(rt, engine, monkeypatch):
    engine.create_volume("orch-s1-data", session_labels("s1"))
    engine.create_volume("orch-s1-cache", session_labels("s1"))
    before(
        monkeypatch,
        engine,
        "remove_volume",
        "orch-s1-data",
        lambda: FakeEngine.remove_volume(engine, "orch-s1-data"),
    )

    report = remove_volumes(rt, report_for(rt))

    assert report["volumes_removed"] == 1
    assert report["errors"] == []
    assert volume_names(engine) == []


# -- remove_network ------------------------------------------------------------------------


def test_the_session_network_is_removed_and_its_subnet_released(rt, redis, engine):
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("s1")
    session_network(engine, "s1")
    session_network(engine, "s2")

    report = remove_network(rt, report_for(rt))

    assert report["networks_removed"] == 1
    assert network_names(engine) == ["session_s2"]
    assert pool.current("s1") is None


def test_a_network_that_cannot_be_removed_is_reported(rt, engine):
    session_network(engine, "s1")
    member(engine, "still-attached", network="session_s1")

    report = remove_network(rt, report_for(rt))

    assert report["networks_removed"] == 0
    assert report["errors"][0].startswith("h1: remove network: ")
    assert "active endpoints" in report["errors"][0]
    assert "session_s1" in network_names(engine)


def test_empty_managed_networks_are_removed_and_used_ones_kept(rt, redis, engine):
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("s1")
    pool.allocate("s2")
    session_network(engine, "s1")
    session_network(engine, "s2")
    member(engine, "tool-x", session_id="s2", network="session_s2")

    result = remove_empty_networks(rt)

    assert result == {"host": "h1", "removed": 1, "errors": []}
    assert network_names(engine) == ["session_s2"]
    assert pool.current("s1") is None
    assert pool.current("s2") is not None


def test_a_network_joined_after_it_was_listed_is_kept_without_error(rt, redis, engine, monkeypatch):
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("s1")
    session_network(engine, "s1")
    network_id = engine.inspect_network("session_s1").id
    before(
        monkeypatch,
        engine,
        "remove_network",
        network_id,
        lambda: member(engine, "late-relic", network="session_s1"),
    )

    result = remove_empty_networks(rt)

    assert result == {"host": "h1", "removed": 0, "errors": []}
    assert "session_s1" in network_names(engine)
    assert pool.current("s1") is not None


def test_an_engine_refusal_to_remove_an_empty_network_is_reported(rt, engine):
    session_network(engine, "s1")
    engine.fail_next("remove_network", DockerError("remove network session_s1: daemon busy"))

    result = remove_empty_networks(rt)

    assert result["removed"] == 0
    [error] = result["errors"]
    assert error.startswith("h1: remove network session_s1: ")
    assert "daemon busy" in error


def test_a_failed_network_listing_is_reported_not_raised(rt, engine):
    engine.fail_next("list_networks", DockerError("list networks: engine is shutting down"))

    result = remove_empty_networks(rt)

    assert result["host"] == "h1" and result["removed"] == 0
    [error] = result["errors"]
    assert error.startswith("h1: ") and "shutting down" in error


# -- the whole chain, then merge_reports ----------------------------------------------------


def start_session_with_a_relic(rt: Runtime) -> None:
    sessions.require_owner(rt, "s1")
    sessions.record_host(rt, "s1")
    request = RelicStartRequest(session_id="s1", relic_name="db", image="busybox:latest")
    relics._register(rt, "r1", request, relics.relic_container_name("s1", "db"))


def test_the_per_host_chain_then_merge_clears_the_session_everywhere(rt, redis, engine):
    start_session_with_a_relic(rt)
    session_network(engine, "s1")
    member(engine, "orch-relic-s1-db", network="session_s1")
    member(engine, "orch-tool-e1", running=False)
    engine.create_volume("orch-s1-data", session_labels("s1"))

    report = report_for(rt)
    for step in (stop_containers, remove_containers, remove_volumes, remove_network):
        report = step(rt, report)
    other_host = {
        "host": "h0",
        "containers_removed": 2,
        "networks_removed": 0,
        "volumes_removed": 1,
        "errors": ["h0: remove volume orch-s1-x: volume is in use"],
    }
    merged = merge_reports(redis, "s1", [report, other_host])

    assert merged.session_id == "s1"
    assert merged.containers_removed == 4
    assert merged.networks_removed == 1
    assert merged.volumes_removed == 2
    assert merged.errors == ["h0: remove volume orch-s1-x: volume is in use"]
    assert merged.hosts == ["h0", "h1"]
    assert container_names(engine) == []
    assert volume_names(engine) == []
    assert network_names(engine) == []
    assert redis.exists(keys.relic("r1")) == 0
    for key in (
        keys.session_owner("s1"),
        keys.session_hosts("s1"),
        keys.session_relics("s1"),
        keys.session_expiry("s1"),
    ):
        assert redis.exists(key) == 0, key
    assert not redis.sismember(keys.SESSIONS, "s1")


def test_merging_leaves_other_sessions_in_the_registry(rt, redis):
    start_session_with_a_relic(rt)
    sessions.record_host(rt, "s2")
    redis.hset(keys.relic("r2"), mapping={"session_id": "s2"})
    redis.sadd(keys.session_relics("s2"), "r2")

    merge_reports(redis, "s1", [])

    assert redis.sismember(keys.SESSIONS, "s2")
    assert redis.exists(keys.relic("r2")) == 1
    assert sessions.hosts_of(redis, "s2") == ["h1"]


def test_merging_no_reports_gives_an_empty_report():
    merged = merge_reports(fakeredis.FakeRedis(), "s1", [])

    assert merged.model_dump() == {
        "session_id": "s1",
        "containers_removed": 0,
        "networks_removed": 0,
        "volumes_removed": 0,
        "errors": [],
        "hosts": [],
    }
