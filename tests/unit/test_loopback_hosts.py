"""A container without a network is made with ``NetworkDisabled`` (no engine sandbox), and
:class:`~orchestrator.engine.docker_engine.DockerEngine` gives it the ``/etc/hosts`` the
engine would have written, before anything can start it: the engine-wide file of
:mod:`orchestrator.engine.hosts_file` mounted read-only, else an upload. The engine's HTTP
calls are recorded and answered here, not sent."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import docker
import docker.errors
import pytest
import requests

from orchestrator import errors
from orchestrator.core.types import ContainerSpec, Mount
from orchestrator.engine import hosts_file, parse
from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.engine.hosts_file import LOOPBACK_HOSTS, VOLUME

MOUNTPOINT = "/var/lib/docker/volumes/orchestrator-loopback-hosts/_data"
SHARED = f"{MOUNTPOINT}/hosts"


class RecordingApi:
    """Stands in for the engine's answers to the calls a create makes."""

    def __init__(self, engine: DockerEngine, mountpoint: str = MOUNTPOINT) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.mountpoint = mountpoint
        self.put_status = 200
        self.pruned = False  # the volume's file is gone: a mount of it is refused
        self.volume_exists = False
        self.missing_images: set[str] = set()
        api = engine.api
        api.inspect_volume = self.inspect_volume  # type: ignore[method-assign]
        api.create_volume = self.create_volume  # type: ignore[method-assign]
        api.create_container_from_config = self.create  # type: ignore[method-assign]
        api.remove_container = self.remove  # type: ignore[method-assign]
        api._put = self.put  # type: ignore[method-assign]

    def inspect_volume(self, name: str) -> dict[str, Any]:
        self.calls.append(("inspect", name))
        if not self.volume_exists:
            raise docker.errors.NotFound("404", explanation=f"get {name}: no such volume")
        return {"Name": name, "Mountpoint": self.mountpoint}

    def create_volume(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        self.calls.append(("volume", (name, labels)))
        self.pruned, self.volume_exists = False, True
        return {"Name": name, "Mountpoint": self.mountpoint}

    def create(self, config: dict[str, Any], name: str | None) -> dict[str, str]:
        mounts = config["HostConfig"].get("Mounts", [])
        if self.pruned and any(m["Source"] == SHARED for m in mounts):
            missing = f"invalid mount config: bind source path does not exist: {SHARED}"
            raise docker.errors.APIError("400", explanation=missing)
        if config["Image"] in self.missing_images:
            absent = f"no such image: {config['Image']}"
            raise docker.errors.ImageNotFound("404", explanation=absent)
        self.calls.append(("create", (name, config)))
        return {"Id": "seed" if name is None else f"id-{name}"}

    def remove(self, container: str, v: bool, force: bool) -> None:
        assert v and force  # the anonymous volumes its image declares go with it
        self.calls.append(("remove", container))

    def put(self, url: str, params: dict[str, str], data: bytes) -> Any:
        container = url.split("/containers/")[1].split("/")[0]
        self.calls.append(("put", (container, params["path"], data)))
        reply = requests.Response()
        reply.status_code, reply.url = self.put_status, url
        reply.reason, reply._content = "Bad Request", b'{"message": "not a directory"}'
        return reply

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def created(self, name: str) -> dict[str, Any]:
        return next(c[1] for k, c in self.calls if k == "create" and c[0] == name)


@pytest.fixture
def engine() -> Any:
    made = DockerEngine(docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41"))
    yield made
    made.close()


def spec(name: str = "t", **extra: Any) -> ContainerSpec:
    return ContainerSpec(name=name, image="img:1", labels={}, **extra)


def files_of(tar_bytes: bytes) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        found = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            found[member.name] = (extracted.read(), member.mode)
        return found


def hosts_mounts(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in config["HostConfig"].get("Mounts", []) if m["Target"] == "/etc/hosts"]


def test_the_first_container_writes_the_shared_file_and_mounts_it_read_only(engine: Any) -> None:
    api = RecordingApi(engine)

    made = engine.create_container_id(spec())

    assert made == "id-t"
    assert api.kinds() == ["inspect", "volume", "create", "put", "remove", "create"]
    (_, (volume, labels)), (_, (_, seed)), (_, (into, path, data)), (_, removed) = api.calls[1:5]
    assert volume == VOLUME and "orchestrator.managed" not in labels  # no cleanup takes it
    assert seed["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Source": VOLUME, "Target": path, "VolumeOptions": {"NoCopy": True}}
    ]  # written through a container that is never started (nothing of its image copied in)
    assert (into, removed) == ("seed", "seed")
    assert files_of(data) == {"hosts": (LOOPBACK_HOSTS.encode(), 0o644)}
    config = api.created("t")
    assert config["NetworkDisabled"] is True and config["HostConfig"]["NetworkMode"] == "none"
    assert hosts_mounts(config) == [
        {"Type": "bind", "Source": SHARED, "Target": "/etc/hosts", "ReadOnly": True}
    ]
    assert LOOPBACK_HOSTS.startswith("127.0.0.1\tlocalhost\n")


def test_a_volume_another_worker_wrote_is_mounted_as_it_is(engine: Any) -> None:
    api = RecordingApi(engine)
    api.volume_exists = True

    engine.create_container_id(spec())

    assert api.kinds() == ["inspect", "create"]
    assert hosts_mounts(api.created("t"))[0]["Source"] == SHARED


def test_later_containers_only_mount_it(engine: Any) -> None:
    api = RecordingApi(engine)
    engine.create_container_id(spec("a"))
    api.calls.clear()

    engine.create_container_id(spec("b"))

    assert api.kinds() == ["create"]
    assert hosts_mounts(api.created("b"))[0]["Source"] == SHARED


def test_a_pruned_volume_gets_an_upload_then_is_written_again(engine: Any) -> None:
    api = RecordingApi(engine)
    engine.create_container_id(spec("a"))
    api.pruned, api.volume_exists, api.calls = True, False, []

    engine.create_container_id(spec("b"))  # the mount is refused: made without it

    assert api.kinds() == ["create", "put"]
    assert hosts_mounts(api.created("b")) == []
    (_, (into, path, data)) = api.calls[1]
    assert (into, path) == ("id-b", "/")
    assert files_of(data) == {"etc/hosts": (LOOPBACK_HOSTS.encode(), 0o644)}
    api.calls.clear()

    engine.create_container_id(spec("c"))

    assert api.kinds() == ["volume", "create", "put", "remove", "create"]  # written again
    assert hosts_mounts(api.created("c"))[0]["Source"] == SHARED


def test_without_a_mountpoint_each_container_gets_an_upload_for_a_while(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi(engine, mountpoint="")
    engine.create_container_id(spec("a"))
    api.calls.clear()

    engine.create_container_id(spec("b"))

    assert api.kinds() == ["create", "put"]  # not asked again at once
    clock = hosts_file.time.monotonic() + 61
    monkeypatch.setattr(hosts_file.time, "monotonic", lambda: clock)
    api.mountpoint, api.calls = MOUNTPOINT, []
    engine.create_container_id(spec("c"))
    assert hosts_mounts(api.created("c"))[0]["Source"] == SHARED


@pytest.mark.parametrize(
    "made",
    [
        spec("b", network="bridge"),
        spec("s", network="orch-net-s1"),
    ],
    ids=["bridge", "session-network"],
)
def test_a_container_the_engine_makes_a_sandbox_for_gets_nothing_more(
    engine: Any, made: ContainerSpec
) -> None:
    api = RecordingApi(engine)

    engine.create_container_id(made)

    assert api.kinds() == ["create"]
    assert "NetworkDisabled" not in api.created(made.name)


def test_a_read_only_root_mounts_the_shared_file_too(engine: Any) -> None:
    api = RecordingApi(engine)

    engine.create_container_id(spec("r", read_only=True))

    config = api.created("r")
    assert config["NetworkDisabled"] is True
    assert hosts_mounts(config)[0]["Source"] == SHARED


def test_a_read_only_root_without_the_shared_file_gets_the_engines_sandbox(
    engine: Any,
) -> None:
    api = RecordingApi(engine)
    engine.create_container_id(spec("a"))
    api.pruned, api.volume_exists, api.calls = True, False, []

    engine.create_container_id(spec("r", read_only=True))  # the mount is refused

    assert api.kinds() == ["create"]  # no upload: a read-only root takes none
    config = api.created("r")
    assert "NetworkDisabled" not in config and hosts_mounts(config) == []
    assert config["HostConfig"]["NetworkMode"] == "none"


def test_a_run_that_mounts_its_own_hosts_file_keeps_it(engine: Any) -> None:
    api = RecordingApi(engine)
    own = Mount(source="/srv/allowed/hosts", target="/etc/hosts", read_only=True)

    engine.create_container_id(spec(mounts=(own,)))

    assert api.kinds() == ["create"]  # nothing written over the run's own file
    assert [m["Source"] for m in hosts_mounts(api.created("t"))] == ["/srv/allowed/hosts"]


def test_an_image_whose_etc_takes_no_file_still_gets_its_container(
    engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api = RecordingApi(engine, mountpoint="")
    api.put_status = 400

    made = engine.create_container_id(spec())

    assert made == "id-t"  # its tool finds no localhost: that image's own loss
    assert api.kinds() == ["inspect", "volume", "create", "put"]
    assert "has no /etc/hosts" in caplog.text


def test_an_image_not_pulled_yet_is_no_reason_to_stop_trying(engine: Any) -> None:
    api = RecordingApi(engine)
    api.missing_images.add("img:1")
    with pytest.raises(errors.ImageNotFound):
        engine.create_container_id(spec("a"))  # the worker pulls it, then creates again
    api.missing_images.clear()
    api.calls.clear()

    engine.create_container_id(spec("b"))

    assert api.kinds() == ["volume", "create", "put", "remove", "create"]
    assert hosts_mounts(api.created("b"))[0]["Source"] == SHARED


def test_a_container_made_without_networking_reads_as_on_network_none() -> None:
    raw = {"Id": "c1", "Config": {"NetworkDisabled": True}, "NetworkSettings": {"Networks": {}}}

    assert dict(parse.container(raw).networks) == {"none": ""}  # as the fake shows it
