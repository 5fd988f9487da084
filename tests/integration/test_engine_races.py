"""Containers that vanish while the janitor, cleanup or stats collection lists them, for real.

The engine lists containers, then each one is inspected; a container removed in between
answers 404. docker-py's ``containers.list()`` without ``ignore_removed`` raised on that
404 and aborted the whole janitor pass. Here the real :class:`DockerEngine` gets a hook
right after the engine's listing reply, which really removes one listed container (with
a second client) before the engine inspects it: the real 404 path, not a fake one. The
janitor pass, the cleanup steps and the stats collection run in this process on that
engine and real Redis, and must complete and handle everything else.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
import redis

from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.settings import Settings
from orchestrator.worker import cleanup, collect, janitor
from orchestrator.worker.runtime import Runtime
from tests.integration.harness import (
    MANAGED,
    REDIS_URL,
    TEST_IMAGE,
    force_remove_managed,
    listed,
    remove_labelled,
    settings_env,
)


class HookedAPI:
    """docker-py's low-level client, with hooks run around the calls the test picks.

    Args:
        api: the ``APIClient`` the engine would use.
        after_list: called with the engine's reply to each container listing, before
            DockerEngine inspects the containers listed.
    """

    def __init__(
        self, api: Any, after_list: Callable[[list[dict[str, Any]]], None] = lambda _: None
    ) -> None:
        self._api = api
        self._after_list = after_list
        #: called with the container id of each stats request; may return a thread
        #: that runs during the request, which the request then waits for
        self.during_stats: Callable[[str], threading.Thread | None] = lambda _: None
        self.stats_errors: list[BaseException] = []

    def containers(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self._api.containers(*args, **kwargs)
        self._after_list(listed)
        return listed

    def stats(self, ref: str, *args: Any, **kwargs: Any) -> Any:
        meanwhile = self.during_stats(ref)
        try:
            return self._api.stats(ref, *args, **kwargs)
        except Exception as exc:
            self.stats_errors.append(exc)
            raise
        finally:
            if meanwhile is not None:
                meanwhile.join()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


class Vanisher:
    """Really removes containers from the engine, once each, when a listing names them."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.pending: set[str] = set()
        self.removed: list[str] = []

    def after_list(self, listed: list[dict[str, Any]]) -> None:
        for summary in listed:
            if summary["Id"] in self.pending:
                self.pending.discard(summary["Id"])
                self.remove(summary["Id"])

    def remove(self, container_id: str) -> None:
        self.client.api.remove_container(container_id, force=True, v=True)
        with pytest.raises(docker.errors.NotFound):  # gone before the engine inspects it
            self.client.api.inspect_container(container_id)
        self.removed.append(container_id)


@pytest.fixture
def host(services: None, docker_client: docker.DockerClient) -> Iterator[str]:
    """A host label of this test only; whatever carries it is removed afterwards."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    yield name
    # These tests make their containers themselves (the product only lists and reaps them):
    # what is left is the test's own, not a leak of the product, so it goes first.
    remove_labelled(docker_client, name, containers_only=True)
    force_remove_managed(docker_client, name)


@pytest.fixture
def vanisher(docker_client: docker.DockerClient) -> Vanisher:
    return Vanisher(docker_client)


@pytest.fixture
def engine(services: None, vanisher: Vanisher) -> Iterator[DockerEngine]:
    """The real engine; each container listing may lose a container before its inspect."""
    real = DockerEngine(docker.from_env())
    real.api = HookedAPI(real.api, after_list=vanisher.after_list)
    yield real
    real.close()


@pytest.fixture
def rt(host: str, engine: DockerEngine) -> Iterator[Runtime]:
    client = redis.Redis.from_url(REDIS_URL)
    yield Runtime(Settings.from_env(settings_env(host)), client, engine=engine)
    client.close()


def start(
    client: docker.DockerClient, host: str, session_id: str, deadline: float, **labels: str
) -> Any:
    """A running managed container of this test's host, as the orchestrator labels them."""
    container = client.containers.run(
        TEST_IMAGE,
        ["sleep", "300"],
        detach=True,
        name=f"{host}-{uuid.uuid4().hex[:6]}",
        labels={
            "orchestrator.managed": "true",
            "orchestrator.host": host,
            "orchestrator.session": session_id,
            "orchestrator.kind": "tool",
            "orchestrator.deadline": str(int(deadline)),
            **labels,
        },
    )
    return container


def still_there(client: docker.DockerClient, host: str) -> list[str]:
    label = {"label": [MANAGED, f"orchestrator.host={host}"]}
    return sorted(c.name for c in listed(client, label))


def test_a_janitor_pass_completes_when_a_container_vanishes_while_it_lists(
    rt: Runtime, host: str, docker_client: docker.DockerClient, vanisher: Vanisher
) -> None:
    session_id = f"race-{uuid.uuid4().hex[:8]}"
    overdue = [start(docker_client, host, session_id, time.time() - 5) for _ in range(3)]
    fresh = start(docker_client, host, session_id, time.time() + 3600)
    victim = overdue[1]
    vanisher.pending.add(victim.id)

    report = janitor.reap_host(rt, network_grace_seconds=60)

    assert vanisher.removed == [victim.id]  # it really vanished mid-list
    removed = report["containers_removed"]
    ours = {c["name"]: c["reason"] for c in removed if c["name"].startswith(f"{host}-")}
    assert ours == {
        overdue[0].name: "past its deadline",
        overdue[2].name: "past its deadline",
    }
    assert report["errors"] == []
    assert still_there(docker_client, host) == [fresh.name]


def test_cleanup_completes_when_containers_vanish_while_it_lists(
    rt: Runtime, host: str, docker_client: docker.DockerClient, vanisher: Vanisher
) -> None:
    session_id = f"race-{uuid.uuid4().hex[:8]}"
    members = [start(docker_client, host, session_id, time.time() + 3600) for _ in range(3)]
    report = cleanup.new_host_report(rt, session_id, force=True, keep_volumes=False)

    vanisher.pending.add(members[0].id)
    report = cleanup.stop_containers(rt, report)
    assert vanisher.removed == [members[0].id]
    assert report["errors"] == []
    for member in members[1:]:
        member.reload()
        assert member.status == "exited"

    vanisher.pending.add(members[1].id)
    report = cleanup.remove_containers(rt, report)

    assert vanisher.removed == [members[0].id, members[1].id]
    assert report["errors"] == []
    assert report["containers_removed"] == 1
    assert still_there(docker_client, host) == []


def test_stats_leave_out_containers_that_vanish_while_listed_or_sampled(
    rt: Runtime,
    host: str,
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    vanisher: Vanisher,
) -> None:
    session_id = f"race-{uuid.uuid4().hex[:8]}"
    kept, listed_away, sampled_away = (
        start(docker_client, host, session_id, time.time() + 3600) for _ in range(3)
    )
    vanisher.pending.add(listed_away.id)

    def remove_while_sampled(ref: str) -> threading.Thread | None:
        # The engine answers a stats request at its collector's next readings (1-2 s);
        # a container removed before then gets a 200 with an empty body.
        if ref != sampled_away.id:
            return None
        remover = threading.Timer(0.2, vanisher.remove, [ref])
        remover.start()
        return remover

    engine.api.during_stats = remove_while_sampled

    found = collect.host_stats(rt)

    assert [s.name for s in found] == [kept.name]
    assert found[0].status == "running" and found[0].host == host
    assert sorted(vanisher.removed) == sorted([listed_away.id, sampled_away.id])
    [empty_body] = engine.api.stats_errors  # what the engine answered for sampled_away
    assert isinstance(empty_body, ValueError)
    assert still_there(docker_client, host) == [kept.name]
