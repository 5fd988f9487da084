"""Containers: create, start, inspect, list, wait, remove."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    ImageNotFound,
    NetworkNotFound,
)
from tests.contract.harness import Harness, read_all
from tests.contract.scenarios import EXITS_0, EXITS_3, RUNS_BRIEFLY, SLEEPS, TEST_IMAGE


def test_a_container_runs_to_its_exit_code(harness: Harness) -> None:
    engine = harness.engine
    spec = harness.spec(EXITS_3, labels=harness.labels(role="tool", tier="a"), memory_mb=64)

    created = engine.create_container(spec)

    assert created.name == spec.name
    assert created.image == spec.image
    assert created.status == "created"
    assert not created.running and not created.finished
    assert created.exit_code is None
    assert created.created_at is not None
    assert created.started_at is None and created.finished_at is None
    assert dict(created.labels) == dict(spec.labels)
    assert created.memory_limit_bytes == 64 * 1024 * 1024

    engine.start_container(created.id)
    assert engine.wait_container(created.id, timeout_seconds=10) == 3

    done = engine.inspect_container(created.id)
    assert done.status == "exited"
    assert done.finished and not done.running
    assert done.exit_code == 3
    assert not done.oom_killed
    assert done.started_at is not None and done.finished_at is not None
    assert created.created_at <= done.started_at
    assert created.created_at <= done.finished_at
    # Not started_at <= finished_at: for a process that ends at once, Docker may record
    # its end a moment before its start.
    assert abs((done.finished_at - done.started_at).total_seconds()) < 5
    assert dict(done.labels) == dict(spec.labels)
    # Waiting on an exited container answers at once, with the same code.
    assert engine.wait_container(created.id, timeout_seconds=5) == 3


def test_inspect_by_name_or_id_and_missing_ones(harness: Harness) -> None:
    engine = harness.engine
    created = engine.create_container(harness.spec(EXITS_0))

    assert engine.inspect_container(created.name).id == created.id
    assert engine.inspect_container(created.id).name == created.name
    found = engine.find_container(created.name)
    assert found is not None and found.id == created.id

    missing = harness.name("missing")
    with pytest.raises(ContainerNotFound):
        engine.inspect_container(missing)
    assert engine.find_container(missing) is None


def test_a_name_in_use_is_a_conflict(harness: Harness) -> None:
    engine = harness.engine
    spec = harness.spec(EXITS_0)
    engine.create_container(spec)

    with pytest.raises(ContainerConflict):
        engine.create_container(spec)


def test_an_invalid_name_is_refused(harness: Harness) -> None:
    with pytest.raises(DockerError) as info:
        harness.engine.create_container(harness.spec(EXITS_0, "bad name!"))

    assert not isinstance(info.value, ContainerConflict)


def test_a_missing_image_is_image_not_found(harness: Harness) -> None:
    engine = harness.engine
    missing = harness.tag("missing")

    with pytest.raises(ImageNotFound):
        engine.create_container(harness.spec(EXITS_0, image=missing))
    # The image is looked up before the name: a taken name still says "no such image".
    engine.create_container(harness.spec(EXITS_0, "taken"))
    with pytest.raises(ImageNotFound):
        engine.create_container(harness.spec(EXITS_0, "taken", image=missing))


def test_list_by_label_key_value_and_bare_key(harness: Harness) -> None:
    engine = harness.engine
    group = f"group={harness.prefix}"
    running = harness.run(SLEEPS, "a", labels=harness.labels(group=harness.prefix, role="x"))
    created = engine.create_container(
        harness.spec(SLEEPS, "b", labels=harness.labels(group=harness.prefix, role="y"))
    ).id
    exited = harness.run(EXITS_0, "c", labels=harness.labels(group=harness.prefix))
    assert engine.wait_container(exited, 10) == 0

    def ids(*filters: str, include_stopped: bool = True) -> set[str]:
        found = engine.list_containers(filters, include_stopped=include_stopped)
        return {c.id for c in found}

    assert ids(group) == {running, created, exited}
    assert ids(group, "role=x") == {running}
    assert ids(group, "role") == {running, created}
    assert ids(group, include_stopped=False) == {running}
    assert engine.running_container_ids([group]) == {running}
    assert engine.running_container_ids([group, "role=y"]) == set()
    assert ids(group, "role=z") == set()
    listed = {c.id: c for c in engine.list_containers([group])}
    assert listed[running].status == "running"
    assert listed[created].status == "created"
    assert listed[exited].status == "exited" and listed[exited].exit_code == 0


def test_a_container_vanishing_mid_list_is_left_out(harness: Harness) -> None:
    engine = harness.engine
    group = f"group={harness.prefix}"
    kept = engine.create_container(
        harness.spec(EXITS_0, "kept", labels=harness.labels(group=harness.prefix))
    ).id
    victim = engine.create_container(
        harness.spec(EXITS_0, "victim", labels=harness.labels(group=harness.prefix))
    ).id

    vanished = harness.vanish_during_list("container", victim)
    listed = engine.list_containers([group])

    assert vanished.fired
    assert [c.id for c in listed] == [kept]
    assert engine.find_container(victim) is None


def test_starting_a_running_container_changes_nothing(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)
    before = engine.inspect_container(ref)

    engine.start_container(ref)

    after = engine.inspect_container(ref)
    assert after.status == "running"
    assert after.started_at == before.started_at


def test_starting_an_exited_container_runs_it_again(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(EXITS_3)
    assert engine.wait_container(ref, 10) == 3
    first = engine.inspect_container(ref)

    engine.start_container(ref)

    assert engine.wait_container(ref, 10) == 3
    second = engine.inspect_container(ref)
    assert first.started_at is not None and second.started_at is not None
    assert second.started_at > first.started_at
    assert read_all(engine.container_logs(ref, stderr=False)) == b"out\nout\n"


def test_missing_containers_cannot_be_started_or_stopped(harness: Harness) -> None:
    missing = harness.name("missing")

    with pytest.raises(ContainerNotFound):
        harness.engine.start_container(missing)
    with pytest.raises(ContainerNotFound):
        harness.engine.stop_container(missing, 1)


def test_a_missing_network_fails_the_start_not_the_create(harness: Harness) -> None:
    engine = harness.engine
    created = engine.create_container(harness.spec(EXITS_0, network=harness.name("no-net")))

    with pytest.raises(NetworkNotFound):
        engine.start_container(created.id)
    assert engine.inspect_container(created.id).status == "created"


def test_remove_container(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    assert engine.remove_container(ref) is True
    assert engine.remove_container(ref) is False
    with pytest.raises(ContainerNotFound):
        engine.inspect_container(ref)


def test_waiting_with_a_short_timeout_returns_none(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    started = time.monotonic()
    assert engine.wait_container(ref, timeout_seconds=0.3) is None
    assert time.monotonic() - started < 3
    assert engine.inspect_container(ref).status == "running"


def test_waiting_returns_once_the_container_exits(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(RUNS_BRIEFLY)

    assert engine.wait_container(ref, timeout_seconds=0.1) is None
    assert engine.wait_container(ref, timeout_seconds=10) == 4


def test_waiting_on_a_missing_container_is_not_found(harness: Harness) -> None:
    with pytest.raises(ContainerNotFound):
        harness.engine.wait_container(harness.name("missing"), timeout_seconds=1)


def test_waiting_on_a_created_container_answers_zero_at_once(harness: Harness) -> None:
    """Docker waits for "not running": a container never started is not running."""
    engine = harness.engine
    created = engine.create_container(harness.spec(SLEEPS))

    started = time.monotonic()
    assert engine.wait_container(created.id, timeout_seconds=5) == 0
    assert time.monotonic() - started < 2


def test_a_container_removed_while_waited_on_ends_the_wait_killed(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(engine.wait_container(ref, timeout_seconds=10))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    engine.remove_container(ref)
    waiter.join(10)

    assert outcome == [137]


def test_network_addresses_exist_only_while_running(harness: Harness) -> None:
    engine = harness.engine
    isolated = engine.create_container(harness.spec(SLEEPS, "isolated"))
    bridged = engine.create_container(harness.spec(SLEEPS, "bridged", network="bridge"))

    assert dict(isolated.networks) == {"none": ""}
    assert dict(bridged.networks) == {"bridge": ""}

    engine.start_container(isolated.id)
    engine.start_container(bridged.id)
    assert dict(engine.inspect_container(isolated.id).networks) == {"none": ""}
    address = engine.inspect_container(bridged.id).networks["bridge"]
    assert address

    engine.kill_container(bridged.id)
    assert engine.wait_container(bridged.id, 10) == 137
    assert dict(engine.inspect_container(bridged.id).networks) == {"bridge": ""}


def test_the_image_cmd_runs_when_the_spec_gives_none(harness: Harness) -> None:
    """The test image's command is ``sh``: without stdin it exits 0 at once."""
    engine = harness.engine
    created = engine.create_container(harness.spec(EXITS_0, command=None, image=TEST_IMAGE))

    engine.start_container(created.id)

    assert engine.wait_container(created.id, 10) == 0


def test_published_ports_show_only_while_running(harness: Harness) -> None:
    engine = harness.engine
    with socket.socket() as probe:  # a host port free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = harness.spec(SLEEPS, network="bridge", ports={8000: port}, ports_host_ip="127.0.0.1")

    created = engine.create_container(spec)
    assert dict(created.ports) == {}

    engine.start_container(created.id)
    assert dict(engine.inspect_container(created.id).ports) == {
        "8000/tcp": (("127.0.0.1", str(port)),)
    }

    engine.kill_container(created.id)
    engine.wait_container(created.id, 10)
    assert dict(engine.inspect_container(created.id).ports) == {}
