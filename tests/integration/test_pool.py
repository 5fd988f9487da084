"""The warm pool: pre-started containers that serve exactly one run each."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient
from tests.integration.conftest import USED_HOSTS, make_client
from tests.integration.harness import TEST_IMAGE, WorkerProcess, force_remove_managed

POOL_SIZE = 2
LIMITS = {"memory_mb": 96, "cpu_limit": 0.5}


def pool_containers(engine: docker.DockerClient, host: str) -> list[Any]:
    labels = ["orchestrator.kind=pool", f"orchestrator.host={host}"]
    # sparse: no inspect per container, which would race with the pool discarding them
    return engine.containers.list(all=True, sparse=True, filters={"label": labels})


def wait_for_pool(engine: docker.DockerClient, host: str, size: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([c for c in pool_containers(engine, host) if c.status == "running"]) == size:
            return
        time.sleep(0.2)
    raise AssertionError(f"pool never reached {size}: {pool_containers(engine, host)}")


@pytest.fixture(scope="module")
def pooled(
    services: None, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[tuple[OrchestratorClient, str]]:
    host = f"it-pool-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    spec = [{"image": TEST_IMAGE, "size": POOL_SIZE, **LIMITS}]
    process = WorkerProcess(
        host, tmp_path_factory.mktemp("pool"), env={"ORCHESTRATOR_POOL": json.dumps(spec)}
    ).start()
    client = make_client(host)
    try:
        wait_for_pool(docker_client, host, POOL_SIZE)
        yield client, host
    finally:
        client.close()
        process.stop()
        undrained = [c.name for c in pool_containers(docker_client, host)]
        force_remove_managed(docker_client, host)  # records leftovers first (leak ledger)
        assert undrained == []  # the worker drained its pool


def pooled_tool(script: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool_name": "pooled",
        "session_id": "pool",
        "image": TEST_IMAGE,
        "command": ["sh", "-c", script],
        "resource_limits": dict(LIMITS),
        **extra,
    }


def send(client: OrchestratorClient, host: str, request: dict[str, Any]) -> Any:
    outcome = client.app.send_task(
        "orchestrator.tools.execute", args=[request], queue=f"host.{host}"
    )
    return outcome.get(timeout=60)


def test_a_matching_run_uses_a_pool_container_once_and_the_pool_refills(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = {c.id for c in pool_containers(docker_client, host)}
    first = send(
        client,
        host,
        pooled_tool('echo "{\\"who\\": \\"$WHO\\"}"; echo err >&2', parameters={"WHO": "pool"}),
    )
    second = send(client, host, pooled_tool("echo again"))
    assert first["status"] == "succeeded"
    assert first["result"] == {"who": "pool"}
    assert first["stderr"] == "err\n"
    assert first["container_id"] in idle  # it ran in a container made ahead of time
    assert second["container_id"] != first["container_id"]  # one run per container
    used = {first["container_id"], second["container_id"]}
    deadline = time.monotonic() + 30  # discarded in the background, off the hot path
    while used & {c.id for c in pool_containers(docker_client, host)}:
        assert time.monotonic() < deadline, "used pool containers were not discarded"
        time.sleep(0.2)
    wait_for_pool(docker_client, host, POOL_SIZE)


def test_pooled_runs_report_failures_and_timeouts_like_cold_runs(
    pooled: tuple[OrchestratorClient, str],
) -> None:
    client, host = pooled
    failed = send(client, host, pooled_tool("echo bad >&2; exit 5"))
    assert (failed["status"], failed["exit_code"], failed["stderr"]) == ("failed", 5, "bad\n")
    limits = {**LIMITS, "timeout_seconds": 2}
    slow = send(client, host, pooled_tool("echo begun; sleep 60", resource_limits=limits))
    assert slow["status"] == "timed_out"
    assert slow["stdout"] == "begun\n"


def test_requests_that_do_not_match_the_pool_run_cold(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = {c.id for c in pool_containers(docker_client, host)}
    other = send(client, host, pooled_tool("echo cold", resource_limits={"memory_mb": 64}))
    assert other["stdout"] == "cold\n"
    assert other["container_id"] not in idle


def test_pool_containers_are_sandboxed(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    _, host = pooled
    for sparse in pool_containers(docker_client, host):
        container = docker_client.containers.get(sparse.id)
        config = container.attrs["HostConfig"]
        assert config["CapDrop"] == ["ALL"]
        assert config["NetworkMode"] == "none"
        assert config["Memory"] == LIMITS["memory_mb"] * 1024 * 1024
        assert container.labels["orchestrator.managed"] == "true"
        assert float(container.labels["orchestrator.deadline"]) > time.time()
