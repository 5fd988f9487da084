"""A worker in a container joins session networks for its probes and leaves them for cleanup."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.types import Container, ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.worker import self_attach

CONTAINER_ID = "3f" * 32
PATTERNS = dict(self_attach._SOURCES)  # before the fixture empties them


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(self_attach.ENV_CONTAINER, raising=False)
    monkeypatch.setattr(self_attach, "_SOURCES", ())
    self_attach.reset()
    yield
    self_attach.reset()


def running(engine: FakeEngine, name: str, **labels: str) -> Container:
    """A started container that runs until stopped."""
    engine.add_image("idle:1", FakeProgram(run_seconds=None))
    spec = ContainerSpec(name=name, image="idle:1", labels=labels, network="bridge")
    created = engine.create_container(spec)
    engine.start_container(created.id)
    return engine.inspect_container(created.id)


def engine_with_worker(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeEngine, Container]:
    engine = FakeEngine()
    worker = running(engine, "orchestrator_worker_1")
    monkeypatch.setenv(self_attach.ENV_CONTAINER, worker.name)
    engine.add_network("session_s1", **{"orchestrator.managed": "true"})
    engine.calls.clear()
    return engine, worker


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
    engine = FakeEngine()
    engine.add_network("session_s1")
    with self_attach.attached(engine, "session_s1") as inside:
        assert inside is False
    assert self_attach.join(engine, "session_s1") is False
    assert self_attach.leave(engine, "session_gone") == 0
    assert [name for name, _ in engine.calls] == ["inspect_network"]  # leave's, only


def test_a_container_not_on_this_engine_joins_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    engine.add_network("session_s1")
    monkeypatch.setenv(self_attach.ENV_CONTAINER, "elsewhere")
    assert self_attach.join(engine, "session_s1") is False
    with self_attach.attached(engine, "session_s1") as inside:
        assert inside is False
    assert engine.called("connect_network") == []
    assert engine.called("inspect_container") == [("elsewhere",)]  # resolved once


def test_concurrent_probes_share_one_attachment(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, worker = engine_with_worker(monkeypatch)
    inside = threading.Barrier(4)
    seen: list[bool] = []
    errors: list[BaseException] = []

    def probe() -> None:
        try:
            with self_attach.attached(engine, "session_s1"):
                inside.wait(5)
                seen.append(worker.id in engine.inspect_network("session_s1").containers)
        except BaseException as exc:  # an error in a thread would not fail the test: keep it
            errors.append(exc)

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not [t for t in threads if t.is_alive()], "a probe never finished"
    if errors:
        raise errors[0]
    assert seen == [True] * 4
    verbs = [name for name, _ in engine.calls if name.endswith("connect_network")]
    assert verbs == ["connect_network", "disconnect_network"]
    assert engine.inspect_network("session_s1").containers == ()


def test_joining_twice_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, worker = engine_with_worker(monkeypatch)
    assert self_attach.join(engine, "session_s1") is True
    assert self_attach.join(engine, "session_s1") is True
    assert engine.inspect_network("session_s1").containers == (worker.id,)


def test_leaving_a_network_that_is_gone_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, worker = engine_with_worker(monkeypatch)
    with self_attach.attached(engine, "session_s1") as inside:
        assert inside is True
        engine.disconnect_network("session_s1", worker.id)
        engine.remove_network("session_s1")
    assert engine.find_network("session_s1") is None


def test_leave_disconnects_workers_but_not_managed_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, worker = engine_with_worker(monkeypatch)
    stale = running(engine, "orchestrator_worker_2")
    relic = running(engine, "orch-relic-s1-api", **{"orchestrator.managed": "true"})
    for container in (worker, stale, relic):
        engine.connect_network("session_s1", container.id)
    assert self_attach.leave(engine, "session_s1") == 2
    assert engine.inspect_network("session_s1").containers == (relic.id,)
    assert self_attach.leave(engine, "session_gone") == 0


def test_sources_find_docker_ids_only() -> None:
    mountinfo = PATTERNS["/proc/self/mountinfo"]
    assert isinstance(mountinfo, re.Pattern)
    assert not mountinfo.search("/var/lib/docker/overlay2/abc/merged / rw\n")
