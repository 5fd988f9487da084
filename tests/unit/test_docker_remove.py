"""DockerEngine.remove_container when another caller removes the same container at once
(a worker's remover, a session cleanup and the janitor may meet on one container)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest
import requests

from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.errors import ContainerConflict


def conflict(message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = 409
    return docker.errors.APIError("409", response=response, explanation=message)


@pytest.fixture
def engine() -> Iterator[DockerEngine]:
    made = DockerEngine(docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41"))
    yield made
    made.close()


def test_a_removal_already_in_progress_is_waited_for(
    engine: DockerEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def remove(ref: str, **_: Any) -> None:
        raise conflict(f"removal of container {ref} is already in progress")

    still_there = [object(), object()]  # found twice more, then gone

    monkeypatch.setattr(engine.api, "remove_container", remove)
    monkeypatch.setattr(
        engine, "find_container", lambda ref: still_there.pop() if still_there else None
    )

    assert engine.remove_container("c1") is False  # gone, by the other removal
    assert still_there == []


def test_another_conflict_is_raised(engine: DockerEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    def remove(ref: str, **_: Any) -> None:
        raise conflict(f"container {ref} is paused and must be unpaused first")

    monkeypatch.setattr(engine.api, "remove_container", remove)

    with pytest.raises(ContainerConflict, match="paused"):
        engine.remove_container("c1")
