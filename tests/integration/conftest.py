"""Fixtures for integration tests: real redis-server, Docker engine and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from orchestrator import OrchestratorClient, Settings
from tests.integration.harness import (
    REDIS_URL,
    WorkerProcess,
    docker_ok,
    force_remove_managed,
    redis_ok,
    require,
    settings_env,
)

USED_HOSTS: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services() -> None:
    require(redis_ok(), f"redis-server at {REDIS_URL}")
    require(docker_ok(), "the Docker engine (with the test image)")
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory under the workers' allowed volume and build roots."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="session")
def docker_client(services: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def host_name() -> str:
    return f"it-a-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def worker_env(shared_dir: Path) -> dict[str, str]:
    return {
        "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS": str(shared_dir),
        "ORCHESTRATOR_ALLOWED_BUILD_ROOTS": str(shared_dir),
        # Builds are off by default; the tests that build run on this worker.
        "ORCHESTRATOR_ALLOW_BUILDS": "true",
    }


@pytest.fixture(scope="session")
def worker(
    services: None,
    host_name: str,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> Iterator[WorkerProcess]:
    USED_HOSTS.add(host_name)
    process = WorkerProcess(host_name, tmp_path_factory.mktemp("logs"), env=worker_env).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, host_name)


def make_client(host_name: str) -> OrchestratorClient:
    return OrchestratorClient(Settings.from_env(settings_env(host_name)))


@pytest.fixture(scope="session")
def client(worker: WorkerProcess) -> Iterator[OrchestratorClient]:
    c = make_client(worker.host_name)
    yield c
    c.close()


@pytest.fixture
def session_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"
