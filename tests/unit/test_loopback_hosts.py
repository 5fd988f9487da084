"""A container without a network is made with ``NetworkDisabled`` (no engine sandbox), and
:class:`~orchestrator.engine.docker_engine.DockerEngine` gives it the ``/etc/hosts`` the
engine would have written, before anything can start it. The engine's HTTP calls are
recorded, not sent."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import docker
import pytest
import requests

from orchestrator.core.types import ContainerSpec
from orchestrator.engine.docker_engine import LOOPBACK_HOSTS, DockerEngine


class RecordingApi:
    """Stands in for the engine's answers to a create and an archive upload."""

    def __init__(self, engine: DockerEngine, put_status: int = 200) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.put_status = put_status
        engine.api.create_container_from_config = self.create  # type: ignore[method-assign]
        engine.api._put = self.put  # type: ignore[method-assign]

    def create(self, config: dict[str, Any], name: str) -> dict[str, str]:
        self.calls.append(("create", config))
        return {"Id": "c0ffee"}

    def put(self, url: str, params: dict[str, str], data: bytes) -> Any:
        self.calls.append(("put", (url, params, data)))
        reply = requests.Response()
        reply.status_code, reply.url = self.put_status, url
        reply.reason, reply._content = "Bad Request", b'{"message": "not a directory"}'
        return reply


@pytest.fixture
def engine() -> Any:
    made = DockerEngine(docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41"))
    yield made
    made.close()


def files_of(tar_bytes: bytes) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        found = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            found[member.name] = (extracted.read(), member.mode)
        return found


def test_a_container_without_a_network_gets_a_hosts_file_with_localhost(engine: Any) -> None:
    api = RecordingApi(engine)

    made = engine.create_container_id(ContainerSpec(name="t", image="img:1", labels={}))

    assert made == "c0ffee"
    (kind, config), (put, (url, params, data)) = api.calls
    assert (kind, put) == ("create", "put")  # the hosts file is there before any start
    assert config["NetworkDisabled"] is True and config["HostConfig"]["NetworkMode"] == "none"
    assert url.endswith("/containers/c0ffee/archive") and params["path"] == "/"
    assert files_of(data) == {"etc/hosts": (LOOPBACK_HOSTS.encode(), 0o644)}
    assert LOOPBACK_HOSTS.startswith("127.0.0.1\tlocalhost\n")


@pytest.mark.parametrize(
    "spec",
    [
        ContainerSpec(name="b", image="img:1", labels={}, network="bridge"),
        ContainerSpec(name="s", image="img:1", labels={}, network="orch-net-s1"),
        ContainerSpec(name="r", image="img:1", labels={}, read_only=True),
    ],
    ids=["bridge", "session-network", "read-only-root"],
)
def test_a_container_the_engine_makes_a_sandbox_for_gets_no_upload(
    engine: Any, spec: ContainerSpec
) -> None:
    api = RecordingApi(engine)

    engine.create_container_id(spec)

    assert [kind for kind, _ in api.calls] == ["create"]
    assert "NetworkDisabled" not in api.calls[0][1]


def test_an_image_whose_etc_takes_no_file_still_gets_its_container(
    engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api = RecordingApi(engine, put_status=400)

    made = engine.create_container_id(ContainerSpec(name="t", image="img:1", labels={}))

    assert made == "c0ffee"  # its tool finds no localhost: that image's own loss
    assert [kind for kind, _ in api.calls] == ["create", "put"]
    assert "has no /etc/hosts" in caplog.text
