"""Networks: create, inspect, list, connect, disconnect, remove."""

from __future__ import annotations

import ipaddress
import random

import pytest

from orchestrator.core.types import NetworkSpec
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    NetworkInUse,
    NetworkNotFound,
)
from tests.contract.harness import Harness
from tests.contract.scenarios import EXITS_0, SLEEPS


def network_spec(harness: Harness, what: str = "net", **fields: object) -> NetworkSpec:
    """A network of this test, named after ``what``, with ``fields`` overriding."""
    values: dict[str, object] = {"name": harness.name(what), "labels": harness.labels()}
    values.update(fields)
    return NetworkSpec(**values)  # type: ignore[arg-type]


def test_create_inspect_and_find(harness: Harness) -> None:
    engine = harness.engine
    spec = network_spec(harness, labels=harness.labels(role="session"), internal=True)

    created = engine.create_network(spec)

    assert created.name == spec.name
    assert created.internal is True
    assert dict(created.labels) == dict(spec.labels)
    assert created.created_at is not None
    assert len(created.subnets) == 1  # the engine picks a free subnet
    ipaddress.ip_network(created.subnets[0])
    assert created.containers == ()
    assert engine.inspect_network(spec.name).id == created.id
    assert engine.inspect_network(created.id).name == spec.name
    found = engine.find_network(spec.name)
    assert found is not None and found.id == created.id


def test_only_exact_names_are_found(harness: Harness) -> None:
    engine = harness.engine
    spec = network_spec(harness)
    engine.create_network(spec)

    with pytest.raises(NetworkNotFound):
        engine.inspect_network(spec.name[:-2])
    assert engine.find_network(harness.name("missing")) is None


def test_a_name_in_use_is_a_conflict(harness: Harness) -> None:
    engine = harness.engine
    engine.create_network(network_spec(harness))

    with pytest.raises(ContainerConflict):
        engine.create_network(network_spec(harness))


def free_subnet(harness: Harness) -> str:
    """A random /24 of 10.160.0.0/12 that no network on the engine overlaps now.

    Away from the session pool (10.213.0.0/16 by default) that other tests may use.
    """
    taken = [
        ipaddress.ip_network(subnet)
        for network in harness.engine.list_networks()
        for subnet in network.subnets
    ]
    while True:
        candidate = ipaddress.ip_network(
            f"10.{random.randint(160, 175)}.{random.randint(0, 255)}.0/24"
        )
        if not any(candidate.overlaps(other) for other in taken if other.version == 4):
            return str(candidate)


def test_a_given_subnet_is_kept_and_overlaps_are_refused(harness: Harness) -> None:
    engine = harness.engine
    subnet = free_subnet(harness)

    created = engine.create_network(network_spec(harness, "a", subnet=subnet))

    assert created.subnets == (subnet,)
    inner = subnet.replace(".0/24", ".128/25")
    with pytest.raises(DockerError) as info:
        engine.create_network(network_spec(harness, "b", subnet=inner))
    assert not isinstance(info.value, ContainerConflict)


def test_list_by_label_key_value_and_bare_key(harness: Harness) -> None:
    engine = harness.engine
    group = f"group={harness.prefix}"
    a = engine.create_network(
        network_spec(harness, "a", labels=harness.labels(group=harness.prefix, role="x"))
    )
    b = engine.create_network(
        network_spec(harness, "b", labels=harness.labels(group=harness.prefix))
    )

    def ids(*filters: str) -> set[str]:
        return {n.id for n in engine.list_networks(filters)}

    assert ids(group) == {a.id, b.id}
    assert ids(group, "role=x") == {a.id}
    assert ids(group, "role") == {a.id}
    assert ids(group, "role=y") == set()


def test_a_network_vanishing_mid_list_is_left_out(harness: Harness) -> None:
    engine = harness.engine
    group = f"group={harness.prefix}"
    kept = engine.create_network(
        network_spec(harness, "kept", labels=harness.labels(group=harness.prefix))
    )
    victim = engine.create_network(
        network_spec(harness, "victim", labels=harness.labels(group=harness.prefix))
    )

    vanished = harness.vanish_during_list("network", victim.id)
    listed = engine.list_networks([group])

    assert vanished.fired
    assert [n.id for n in listed] == [kept.id]


def test_remove_waits_for_running_containers_to_go(harness: Harness) -> None:
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    ref = harness.run(SLEEPS, network=network.name)

    attached = engine.inspect_network(network.name)
    assert attached.containers == (ref,)
    address = engine.inspect_container(ref).networks[network.name]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(network.subnets[0])
    with pytest.raises(NetworkInUse):
        engine.remove_network(network.name)

    engine.remove_container(ref)
    engine.remove_network(network.name)

    assert engine.find_network(network.name) is None
    with pytest.raises(NetworkNotFound):
        engine.remove_network(network.name)


def test_stopped_containers_do_not_hold_a_network(harness: Harness) -> None:
    """Only running containers have endpoints; a stopped one does not block removal."""
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    ref = harness.run(EXITS_0, network=network.name)
    assert engine.wait_container(ref, 10) == 0

    assert engine.inspect_network(network.id).containers == ()
    engine.remove_network(network.id)

    assert engine.find_network(network.id) is None


def test_predefined_networks_cannot_be_removed(harness: Harness) -> None:
    with pytest.raises(DockerError) as info:
        harness.engine.remove_network("bridge")

    assert not isinstance(info.value, NetworkInUse)
    assert harness.engine.find_network("bridge") is not None


def test_connect_and_disconnect_a_running_container(harness: Harness) -> None:
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    ref = harness.run(SLEEPS, network="bridge")

    engine.connect_network(network.name, ref, aliases=["svc"])
    engine.connect_network(network.name, ref)  # already attached: nothing happens

    assert engine.inspect_network(network.name).containers == (ref,)
    address = engine.inspect_container(ref).networks[network.name]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(network.subnets[0])

    engine.disconnect_network(network.name, ref)
    engine.disconnect_network(network.name, ref)  # not attached: nothing happens

    assert engine.inspect_network(network.name).containers == ()
    assert set(engine.inspect_container(ref).networks) == {"bridge"}


def test_connect_and_disconnect_containers_that_are_not_running(harness: Harness) -> None:
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    created = engine.create_container(harness.spec(SLEEPS, "created", network="bridge")).id
    exited = harness.run(EXITS_0, "exited", network=network.name)
    assert engine.wait_container(exited, 10) == 0

    engine.connect_network(network.name, created)
    engine.connect_network(network.name, created)
    assert engine.inspect_container(created).networks == {"bridge": "", network.name: ""}
    assert engine.inspect_network(network.name).containers == ()

    engine.disconnect_network(network.name, created)
    engine.disconnect_network(network.name, exited)

    assert set(engine.inspect_container(created).networks) == {"bridge"}
    assert set(engine.inspect_container(exited).networks) == set()


def test_a_container_without_networking_cannot_join_one(harness: Harness) -> None:
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    ref = harness.run(SLEEPS, network="none")

    with pytest.raises(DockerError) as info:
        engine.connect_network(network.name, ref)

    assert not isinstance(info.value, NetworkNotFound | ContainerNotFound)


def test_connect_says_which_one_is_missing(harness: Harness) -> None:
    engine = harness.engine
    network = engine.create_network(network_spec(harness))
    ref = harness.run(SLEEPS, network="bridge")

    with pytest.raises(NetworkNotFound):
        engine.connect_network(harness.name("no-net"), ref)
    with pytest.raises(ContainerNotFound):
        engine.connect_network(network.name, harness.name("no-container"))
    with pytest.raises(NetworkNotFound):
        engine.disconnect_network(harness.name("no-net"), ref)
    engine.disconnect_network(network.name, harness.name("no-container"))  # not attached
