"""Behaviour of session cleanup: the per-host steps on a fake engine (stop, remove
containers, volumes, network) and the merge that clears the session from the registry."""

from __future__ import annotations

import fakeredis
import pytest

from orchestrator.models import RelicStartRequest
from orchestrator.settings import Settings
from orchestrator.state import keys, sessions
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
from orchestrator.worker.networks import SubnetPool
from orchestrator.worker.runtime import Runtime
from tests.unit.fakes import (
    FakeContainer,
    FakeDocker,
    FakeNetwork,
    FakeVolume,
    conflict,
    not_found,
    server_error,
)

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)


@pytest.fixture
def rt(redis, docker) -> Runtime:
    return Runtime(SETTINGS, redis, docker_client=docker)


def session_labels(session_id: str) -> dict[str, str]:
    return {"orchestrator.managed": "true", "orchestrator.session": session_id}


def member(docker: FakeDocker, name: str, session_id: str = "s1", **kwargs) -> FakeContainer:
    kwargs.setdefault("status", "running")
    kwargs.setdefault("run_seconds", None)
    return docker.containers.add(FakeContainer(name, labels=session_labels(session_id), **kwargs))


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


def test_force_kills_every_running_container_of_the_session(rt, docker):
    a = member(docker, "a")
    b = member(docker, "b")
    done = member(docker, "done", status="exited")
    other = member(docker, "other", session_id="s2")

    report = stop_containers(rt, report_for(rt, force=True))

    assert ("kill", None) in a.calls and ("kill", None) in b.calls
    assert not any(call[0] in ("kill", "stop") for call in done.calls)
    assert not any(call[0] in ("kill", "stop") for call in other.calls)
    assert report["errors"] == []
    assert a.exited and b.exited and not other.exited


def test_without_force_containers_are_stopped_with_the_grace_period(rt, docker):
    a = member(docker, "a")

    stop_containers(rt, report_for(rt, force=False))

    assert ("stop", GRACE_SECONDS) in a.calls
    assert not any(call[0] == "kill" for call in a.calls)


def test_stop_errors_are_collected_and_the_others_still_stop(rt, docker):
    member(docker, "stuck", kill_error=server_error("permission denied"))
    member(docker, "gone", kill_error=not_found("gone"))
    member(docker, "raced", kill_error=conflict("Container raced is not running"))
    fine = member(docker, "fine")

    report = stop_containers(rt, report_for(rt, force=True))

    assert fine.exited
    [error] = report["errors"]
    assert error.startswith("h1: stop stuck: ")
    assert "permission denied" in error


def test_a_failed_listing_is_reported_not_raised(rt, docker):
    docker.containers.list_error = server_error("engine is shutting down")

    report = stop_containers(rt, report_for(rt))

    assert len(report["errors"]) == 1
    assert report["errors"][0].startswith("h1: list containers: ")
    assert "shutting down" in report["errors"][0]


# -- remove_containers ---------------------------------------------------------------------


def test_every_container_of_the_session_is_removed_and_counted(rt, docker):
    running = member(docker, "running")
    member(docker, "exited", status="exited")
    member(docker, "other", session_id="s2")

    report = remove_containers(rt, report_for(rt))

    assert report["containers_removed"] == 2
    assert docker.containers.names == ["other"]
    assert ("remove", True, True) in running.calls


def test_removal_errors_are_collected_and_vanished_containers_not_counted(rt, docker):
    member(docker, "busy", remove_error=server_error("device or resource busy"))
    member(docker, "vanished", remove_error=not_found("vanished"))
    member(docker, "fine")

    report = remove_containers(rt, report_for(rt))

    assert report["containers_removed"] == 1
    assert len(report["errors"]) == 1
    assert report["errors"][0].startswith("h1: remove busy: ")
    assert "resource busy" in report["errors"][0]


def test_removal_adds_to_the_count_already_in_the_report(rt, docker):
    member(docker, "a")
    report = report_for(rt)
    report["containers_removed"] = 3

    assert remove_containers(rt, report)["containers_removed"] == 4


# -- remove_volumes ------------------------------------------------------------------------


def test_the_session_volumes_are_removed(rt, docker):
    data = docker.volumes.add(FakeVolume("orch-s1-data", labels=session_labels("s1")))
    docker.volumes.add(FakeVolume("orch-s1-cache", labels=session_labels("s1")))
    docker.volumes.add(FakeVolume("orch-s2-data", labels=session_labels("s2")))

    report = remove_volumes(rt, report_for(rt))

    assert report["volumes_removed"] == 2
    assert docker.volumes.names == ["orch-s2-data"]
    assert data.calls == [("remove", True)]


def test_keep_volumes_leaves_them_alone(rt, docker):
    docker.volumes.add(FakeVolume("orch-s1-data", labels=session_labels("s1")))

    report = remove_volumes(rt, report_for(rt, keep_volumes=True))

    assert report["volumes_removed"] == 0
    assert docker.volumes.names == ["orch-s1-data"]


def test_a_volume_in_use_is_reported(rt, docker):
    docker.volumes.add(
        FakeVolume(
            "orch-s1-data",
            labels=session_labels("s1"),
            remove_error=conflict("remove orch-s1-data: volume is in use - [abc]"),
        )
    )

    report = remove_volumes(rt, report_for(rt))

    assert report["volumes_removed"] == 0
    assert report["errors"][0].startswith("h1: remove volume orch-s1-data: ")
    assert "in use" in report["errors"][0]


# -- remove_network ------------------------------------------------------------------------


def test_the_session_network_is_removed_and_its_subnet_released(rt, redis, docker):
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("s1")
    docker.networks.add(FakeNetwork("session_s1", labels=session_labels("s1")))
    docker.networks.add(FakeNetwork("session_s2", labels=session_labels("s2")))

    report = remove_network(rt, report_for(rt))

    assert report["networks_removed"] == 1
    assert docker.networks.names == ["session_s2"]
    assert pool.current("s1") is None


def test_a_network_that_cannot_be_removed_is_reported(rt, docker):
    docker.networks.add(
        FakeNetwork(
            "session_s1",
            labels=session_labels("s1"),
            remove_error=server_error("error while removing network: network has active endpoints"),
        )
    )

    report = remove_network(rt, report_for(rt))

    assert report["networks_removed"] == 0
    assert report["errors"][0].startswith("h1: remove network: ")
    assert "active endpoints" in report["errors"][0]


def test_empty_managed_networks_are_removed_and_used_ones_kept(rt, redis, docker):
    pool = SubnetPool.for_settings(redis, SETTINGS)
    pool.allocate("s1")
    docker.networks.add(FakeNetwork("session_s1", labels=session_labels("s1")))
    docker.networks.add(
        FakeNetwork("session_s2", labels=session_labels("s2"), containers={"x": {}})
    )
    docker.networks.add(FakeNetwork("bridge"))

    result = remove_empty_networks(rt)

    assert result == {"host": "h1", "removed": 1, "errors": []}
    assert docker.networks.names == ["bridge", "session_s2"]
    assert pool.current("s1") is None


# -- the whole chain, then merge_reports ----------------------------------------------------


def start_session_with_a_relic(rt: Runtime) -> None:
    sessions.require_owner(rt, "s1")
    sessions.record_host(rt, "s1")
    request = RelicStartRequest(session_id="s1", relic_name="db", image="busybox:latest")
    relics._register(rt, "r1", request, relics.relic_container_name("s1", "db"))


def test_the_per_host_chain_then_merge_clears_the_session_everywhere(rt, redis, docker):
    start_session_with_a_relic(rt)
    member(docker, "orch-relic-s1-db")
    member(docker, "orch-tool-e1", status="exited")
    docker.volumes.add(FakeVolume("orch-s1-data", labels=session_labels("s1")))
    docker.networks.add(FakeNetwork("session_s1", labels=session_labels("s1")))

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
    assert docker.containers.names == []
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
