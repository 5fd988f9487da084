"""The engine itself: reachable or not."""

from __future__ import annotations

import pytest

from orchestrator.errors import DockerUnavailable
from tests.contract.harness import Harness


def test_ping(harness: Harness) -> None:
    harness.engine.ping()


def test_an_unreachable_engine_is_docker_unavailable(harness: Harness) -> None:
    """Unavailable, not "not found": tasks retry on it instead of giving up."""
    down = harness.unreachable_engine()
    try:
        for call in (
            down.ping,
            lambda: down.list_containers(),
            lambda: down.inspect_container(harness.name("any")),
            lambda: down.remove_container(harness.name("any")),
            lambda: down.kill_container(harness.name("any")),
            lambda: down.inspect_image("busybox:latest"),
        ):
            with pytest.raises(DockerUnavailable) as info:
                call()
            assert "unreachable" in str(info.value)
    finally:
        down.close()
