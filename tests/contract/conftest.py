"""Every contract test runs twice: against the FakeEngine and against the real Docker engine.

The Docker variant is marked ``integration``. Without a reachable engine (or without the
test image) it is skipped, but it fails when ``CI`` is set: a CI run must not go green
without having checked the fake against Docker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.errors import OrchestratorError
from tests.contract.harness import DockerHarness, FakeHarness, Harness
from tests.contract.scenarios import TEST_IMAGE

ENGINES = [
    pytest.param("fake", marks=[pytest.mark.contract, pytest.mark.timeout(30)]),
    pytest.param(
        "docker",
        marks=[pytest.mark.contract, pytest.mark.integration, pytest.mark.timeout(60)],
    ),
]


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The real engine, from ``DOCKER_HOST`` & co, with the test image present."""
    try:
        engine = DockerEngine.from_env(timeout_seconds=30)
        engine.ping()
    except OrchestratorError as exc:
        _unavailable(f"the Docker engine is not reachable: {exc}")
    try:
        engine.inspect_image(TEST_IMAGE)
    except OrchestratorError as exc:
        engine.close()
        _unavailable(f"the test image {TEST_IMAGE} is missing (run `make setup`): {exc}")
    yield engine
    engine.close()


@pytest.fixture(params=ENGINES)
def harness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """The engine under test, with unique names and cleanup."""
    made: Harness
    if request.param == "fake":
        made = FakeHarness()
    else:
        made = DockerHarness(request.getfixturevalue("docker_engine"), monkeypatch)
    yield made
    made.cleanup()
