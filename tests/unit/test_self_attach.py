"""A worker in a container joins session networks for its probes and leaves them for cleanup."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.worker import self_attach
from tests.unit.fakes import FakeContainer, FakeDocker, FakeNetwork, api_error

CONTAINER_ID = "3f" * 32
PATTERNS = dict(self_attach._SOURCES)  # before the fixture empties them


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(self_attach.ENV_CONTAINER, raising=False)
    monkeypatch.setattr(self_attach, "_SOURCES", ())
    self_attach.reset()
    yield
    self_attach.reset()


def engine_with_worker(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeDocker, FakeContainer]:
    docker = FakeDocker()
    worker = docker.containers.add(FakeContainer("orchestrator_worker_1", status="running"))
    monkeypatch.setenv(self_attach.ENV_CONTAINER, worker.name)
    docker.networks.add(FakeNetwork("session_s1", labels={"orchestrator.managed": "true"}))
    return docker, worker


@pytest.mark.parametrize(
    ("path_name", "content"),
    [
        (
            "mountinfo",
            f"858 840 254:0 /var/lib/docker/containers/{CONTAINER_ID}/hostname /etc/hostname rw\n",
        ),
        ("cgroup", f"1:cpu:/docker/{CONTAINER_ID}\n0::/docker/{CONTAINER_ID}\n"),
        ("cgroup", f"0::/system.slice/docker-{CONTAINER_ID}.scope\n"),
    ],
)
def test_own_container_id_is_read_from_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path_name: str, content: str
) -> None:
    source = tmp_path / path_name
    source.write_text(content)
    pattern = PATTERNS[f"/proc/self/{path_name}"]
    monkeypatch.setattr(self_attach, "_SOURCES", ((str(source), pattern),))
    assert self_attach.own_container_id({}) == CONTAINER_ID


def test_explicit_setting_wins_and_a_plain_host_has_no_container() -> None:
    assert self_attach.own_container_id({self_attach.ENV_CONTAINER: "worker-a"}) == "worker-a"
    assert self_attach.own_container_id({}) is None


def test_on_a_plain_host_nothing_is_asked_of_the_engine() -> None:
    docker = FakeDocker()
    network = docker.networks.add(FakeNetwork("session_s1"))
    with self_attach.attached(docker, "session_s1") as inside:
        assert inside is False
    assert self_attach.join(docker, "session_s1") is False
    assert network.calls == []


def test_a_container_not_on_this_engine_joins_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    docker = FakeDocker()
    network = docker.networks.add(FakeNetwork("session_s1"))
    monkeypatch.setenv(self_attach.ENV_CONTAINER, "elsewhere")
    assert self_attach.join(docker, "session_s1") is False
    assert network.calls == []


def test_concurrent_probes_share_one_attachment(monkeypatch: pytest.MonkeyPatch) -> None:
    docker, worker = engine_with_worker(monkeypatch)
    network = docker.networks.get("session_s1")
    inside = threading.Barrier(4)

    def probe() -> None:
        with self_attach.attached(docker, "session_s1"):
            inside.wait(5)
            assert worker.id in network.attrs["Containers"]

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    verbs = [call[0] for call in network.calls]
    assert verbs == ["connect", "disconnect"]
    assert network.attrs["Containers"] == {}


def test_joining_twice_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    docker, worker = engine_with_worker(monkeypatch)
    network = docker.networks.get("session_s1")

    def already(container: object, **_: object) -> None:
        raise api_error(403, f"endpoint with name {worker.name} already exists in network x")

    monkeypatch.setattr(network, "connect", already)
    assert self_attach.join(docker, "session_s1") is True


def test_leave_disconnects_workers_but_not_managed_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker, worker = engine_with_worker(monkeypatch)
    stale = docker.containers.add(FakeContainer("orchestrator_worker_2", status="running"))
    relic = docker.containers.add(
        FakeContainer(
            "orch-relic-s1-api", status="running", labels={"orchestrator.managed": "true"}
        )
    )
    network = docker.networks.get("session_s1")
    for container in (worker, stale, relic):
        network.connect(container)
    assert self_attach.leave(docker, "session_s1") == 2
    assert set(network.attrs["Containers"]) == {relic.id}
    assert self_attach.leave(docker, "session_gone") == 0


def test_sources_find_docker_ids_only() -> None:
    mountinfo = PATTERNS["/proc/self/mountinfo"]
    assert isinstance(mountinfo, re.Pattern)
    assert not mountinfo.search("/var/lib/docker/overlay2/abc/merged / rw\n")
