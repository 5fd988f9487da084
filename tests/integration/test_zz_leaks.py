"""Runs last (file order): the suite must leave no managed container, network or volume."""

from __future__ import annotations

import time

import docker

from tests.integration.harness import managed_leftovers


def test_no_managed_container_network_or_volume_is_left_behind(
    docker_client: docker.DockerClient,
) -> None:
    deadline = time.monotonic() + 15  # background discards and removals may still be finishing
    leftovers = managed_leftovers(docker_client)
    while any(leftovers.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        leftovers = managed_leftovers(docker_client)
    assert leftovers == {"containers": [], "networks": [], "volumes": []}
