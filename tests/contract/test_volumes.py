"""Named volumes: create, inspect, list, remove."""

from __future__ import annotations

import pytest

from orchestrator.core.types import Mount
from orchestrator.errors import DockerError, VolumeInUse, VolumeNotFound
from tests.contract.harness import Harness
from tests.contract.scenarios import EXITS_0, SLEEPS


def test_create_is_idempotent_and_keeps_the_first_labels(harness: Harness) -> None:
    engine = harness.engine
    name = harness.name("vol")

    created = engine.create_volume(name, harness.labels(role="cache"))
    again = engine.create_volume(name, harness.labels(role="other"))

    assert created.name == again.name == name
    assert dict(created.labels) == harness.labels(role="cache")
    assert dict(again.labels) == harness.labels(role="cache")
    assert created.created_at is not None
    assert dict(engine.inspect_volume(name).labels) == harness.labels(role="cache")


def test_list_by_label_key_value_and_bare_key(harness: Harness) -> None:
    engine = harness.engine
    group = f"group={harness.prefix}"
    engine.create_volume(harness.name("a"), harness.labels(group=harness.prefix, role="x"))
    engine.create_volume(harness.name("b"), harness.labels(group=harness.prefix))

    def names(*filters: str) -> set[str]:
        return {v.name for v in engine.list_volumes(filters)}

    assert names(group) == {harness.name("a"), harness.name("b")}
    assert names(group, "role=x") == {harness.name("a")}
    assert names(group, "role") == {harness.name("a")}
    assert names(group, "role=y") == set()


def test_a_volume_in_use_cannot_be_removed(harness: Harness) -> None:
    engine = harness.engine
    name = harness.name("vol")
    engine.create_volume(name, harness.labels())
    mount = Mount(source=name, target="/data")
    created = engine.create_container(harness.spec(SLEEPS, "created", mounts=(mount,))).id
    exited = harness.run(EXITS_0, "exited", mounts=(mount,))
    assert engine.wait_container(exited, 10) == 0

    with pytest.raises(VolumeInUse):
        engine.remove_volume(name)
    engine.remove_container(created)
    with pytest.raises(VolumeInUse):  # a stopped container still uses it
        engine.remove_volume(name)
    engine.remove_container(exited)  # removes anonymous volumes only

    engine.remove_volume(name)

    with pytest.raises(VolumeNotFound):
        engine.inspect_volume(name)
    with pytest.raises(VolumeNotFound):
        engine.remove_volume(name)


def test_a_mount_creates_a_missing_volume(harness: Harness) -> None:
    engine = harness.engine
    name = harness.name("auto")

    engine.create_container(harness.spec(SLEEPS, mounts=(Mount(source=name, target="/data"),)))

    volume = engine.inspect_volume(name)
    assert volume.name == name
    assert dict(volume.labels) == {}


def test_an_invalid_name_is_refused(harness: Harness) -> None:
    with pytest.raises(DockerError):
        harness.engine.create_volume(harness.name("bad name!"), harness.labels())
