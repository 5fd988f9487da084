"""Fixtures for integration tests: real redis-server, Docker engine and worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from orchestrator import OrchestratorClient, Settings
from orchestrator.engine.hosts_file import VOLUME
from tests.integration.harness import (
    LEDGER,
    REDIS_URL,
    WorkerProcess,
    docker_ok,
    force_remove_managed,
    redis_ok,
    require,
    settings_env,
)

#: Every host label this suite gave a worker or a test; test_zz_leaks checks each of them.
USED_HOSTS: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Leaks found by a teardown are blamed on the last test that ran before it."""
    LEDGER.current_test = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leaks found after test_zz_leaks ran (late teardowns), or in a run without it, fail."""
    late = LEDGER.unreported()
    if not late:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"LEAKED (found by a teardown, not yet reported): {leak}" for leak in late]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    else:
        print("\n".join(lines))
    LEDGER.reported = len(LEDGER.leaks)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    # The engine-wide /etc/hosts of containers without a network, which the workers made.
    for volume in client.volumes.list(filters={"name": VOLUME}):
        if volume.name == VOLUME:
            volume.remove(force=True)
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
