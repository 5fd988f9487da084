"""Relics and sessions on one Docker host: real Redis, engine and worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient
from orchestrator.errors import RelicConflict, RelicExited, RelicNotFound, RelicUnhealthy
from tests.integration.harness import TEST_IMAGE, listed

HTTPD = (
    'mkdir -p /www && echo ok > /www/health && echo "hello from $RELIC" > /www/index.html'
    " && exec httpd -f -p 8000 -h /www"
)


def relic(session_id: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "relic_name": name,
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", HTTPD],
        "environment": {"RELIC": name},
        "health_timeout_seconds": 20,
        **extra,
    }


def session_objects(docker_client: docker.DockerClient, session_id: str) -> dict[str, list[str]]:
    label = {"label": f"orchestrator.session={session_id}"}
    return {
        "containers": [c.name for c in listed(docker_client, label)],
        "networks": [n.name for n in docker_client.networks.list(filters=label)],
        "volumes": [v.name for v in docker_client.volumes.list(filters=label)],
    }


NOTHING: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


@pytest.fixture
def session(client: OrchestratorClient, session_id: str) -> Any:
    yield session_id
    client.cleanup_session(session_id)


def test_two_relics_share_the_session_network_and_are_reached_by_url(
    client: OrchestratorClient, session: str, docker_client: docker.DockerClient
) -> None:
    cache = client.start_relic(relic(session, "cache"), timeout=60)
    db = client.start_relic(relic(session, "db"), timeout=60)
    for info in (cache, db):
        assert info.status == "running" and info.healthy
        assert info.network == f"session_{session}"
        assert info.internal_url == f"http://{info.container_name}:8000"
    network = docker_client.networks.get(f"session_{session}")
    assert network.attrs["Internal"] is True
    assert network.attrs["Labels"]["orchestrator.managed"] == "true"
    script = f"wget -qO- {cache.internal_url}/index.html; wget -qO- http://db:8000/index.html"
    result = client.run_tool(
        {
            "tool_name": "fetch",
            "session_id": session,
            "image": TEST_IMAGE,
            "network_mode": "session",
            "command": ["sh", "-c", script],
        },
        timeout=60,
    )
    assert result.status == "succeeded", result
    assert result.stdout == "hello from cache\nhello from db\n"
    listed = client.list_relics(session)
    assert sorted(r.relic_name for r in listed) == ["cache", "db"]
    assert client.get_relic(cache.relic_id).healthy is True


def test_another_sessions_tool_cannot_reach_the_relics(
    client: OrchestratorClient, session: str
) -> None:
    cache = client.start_relic(relic(session, "cache"), timeout=60)
    other = f"other-{uuid.uuid4().hex[:8]}"
    try:
        result = client.run_tool(
            {
                "tool_name": "snoop",
                "session_id": other,
                "image": TEST_IMAGE,
                "network_mode": "session",
                "command": ["sh", "-c", f"wget -T 3 -qO- http://{cache.ip_address}:8000/"],
                "resource_limits": {"timeout_seconds": 30},
            },
            timeout=60,
        )
        assert result.status == "failed"
        assert "hello" not in result.stdout
    finally:
        client.cleanup_session(other)


def test_relic_that_exits_fails_fast_with_its_logs_and_leaves_nothing(
    client: OrchestratorClient, session: str, docker_client: docker.DockerClient
) -> None:
    started = time.monotonic()
    bad = relic(session, "crashy", command=["sh", "-c", "echo boom-reason >&2; exit 7"])
    bad["health_timeout_seconds"] = 60
    with pytest.raises(RelicExited, match="boom-reason"):
        client.start_relic(bad, timeout=60)
    assert time.monotonic() - started < 15
    assert session_objects(docker_client, session)["containers"] == []


def test_relic_that_never_gets_healthy_times_out_and_leaves_nothing(
    client: OrchestratorClient, session: str, docker_client: docker.DockerClient
) -> None:
    mute = relic(session, "mute", command=["sleep", "300"], health_timeout_seconds=2)
    with pytest.raises(RelicUnhealthy, match="did not answer"):
        client.start_relic(mute, timeout=60)
    assert session_objects(docker_client, session)["containers"] == []


def test_same_name_twice_in_a_session_is_a_conflict(
    client: OrchestratorClient, session: str
) -> None:
    client.start_relic(relic(session, "cache"), timeout=60)
    with pytest.raises(RelicConflict, match="relic_name"):
        client.start_relic(relic(session, "cache"), timeout=60)


def test_stop_then_remove(client: OrchestratorClient, session: str) -> None:
    info = client.start_relic(relic(session, "svc"), timeout=60)
    stopped = client.stop_relic(info.relic_id)
    assert stopped.status == "stopped" and stopped.healthy is False
    assert client.get_relic(info.relic_id).status == "stopped"
    assert client.remove_relic(info.relic_id) == {"relic_id": info.relic_id, "removed": True}
    with pytest.raises(RelicNotFound):
        client.get_relic(info.relic_id)


def test_named_volumes_persist_across_relic_restarts_until_cleanup(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    writer = relic(
        session_id,
        "store",
        command=["sh", "-c", "date >> /data/boots; " + HTTPD],
        volumes=[{"source": "data", "target": "/data"}],
    )
    first = client.start_relic(writer, timeout=60)
    client.remove_relic(first.relic_id)
    client.start_relic(writer, timeout=60)
    reader = client.run_tool(
        {
            "tool_name": "count",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "network_mode": "session",
            "command": ["sh", "-c", "wget -qO- http://store:8000/health"],
        },
        timeout=60,
    )
    assert reader.stdout == "ok\n"
    volume = docker_client.volumes.get(f"orch-vol-{len(session_id)}-{session_id}-data")
    assert volume.attrs["Labels"]["orchestrator.session"] == session_id
    boots = docker_client.containers.run(
        TEST_IMAGE, ["cat", "/data/boots"], volumes={volume.name: {"bind": "/data"}}, remove=True
    )
    assert len(boots.decode().splitlines()) == 2
    report = client.cleanup_session(session_id)
    assert report.volumes_removed == 1
    assert session_objects(docker_client, session_id) == NOTHING


def test_cleanup_removes_everything_and_a_second_cleanup_reports_zero(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    client.start_relic(relic(session_id, "a"), timeout=60)
    client.start_relic(relic(session_id, "b"), timeout=60)
    kept = client.execute_tool(
        {
            "tool_name": "kept",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "command": ["true"],
            "cleanup": False,
        }
    )
    kept.result(timeout=60)
    report = client.cleanup_session(session_id)
    assert report.containers_removed == 3
    assert report.networks_removed == 1
    assert report.errors == []
    assert client.settings.host_name in report.hosts
    assert session_objects(docker_client, session_id) == NOTHING
    again = client.cleanup_session(session_id)
    assert (again.containers_removed, again.networks_removed, again.errors) == (0, 0, [])
    assert client.list_relics(session_id) == []


def test_cleanup_of_an_unknown_session_is_a_success_with_zero_counts(
    client: OrchestratorClient,
) -> None:
    report = client.cleanup_session(f"never-{uuid.uuid4().hex[:8]}")
    assert (report.containers_removed, report.networks_removed, report.errors) == (0, 0, [])


def test_graceful_cleanup_stops_relics_in_parallel(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    stubborn = "trap '' TERM; " + HTTPD.replace("exec httpd", "httpd")
    for n in range(4):
        client.start_relic(relic(session_id, f"s{n}", command=["sh", "-c", stubborn]), timeout=60)
    started = time.monotonic()
    report = client.cleanup_session(session_id, force=False)
    elapsed = time.monotonic() - started
    assert report.containers_removed == 4
    assert elapsed < 10 + 8  # one grace period (10 s) plus slack, not four
    assert session_objects(docker_client, session_id) == NOTHING


def test_publishing_a_host_port(client: OrchestratorClient, session: str) -> None:
    import socket
    import urllib.request

    for port in range(20000 + uuid.uuid4().int % 9000, 30000):  # the default allowed range
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    info = client.start_relic(relic(session, "web", ports={8000: port}), timeout=60)
    assert info.ports == {"8000/tcp": port}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
        assert reply.read() == b"ok\n"


def test_session_relic_and_tool_validation_errors_name_the_field(
    client: OrchestratorClient, session_id: str
) -> None:
    from orchestrator.errors import InvalidRequest

    for bad, field in [
        ({"health_check_endpoint": "health"}, "health_check_endpoint"),
        ({"port": 70000}, "port"),
        ({"ports": {8000: 0}}, "ports"),
        ({"session_id": "a/b"}, "session_id"),
    ]:
        with pytest.raises(InvalidRequest, match=field):
            client.start_relic({**relic(session_id, "x"), **bad})
