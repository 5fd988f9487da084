"""Session networks on a stock engine: our own subnet pool lifts the ~30 network limit."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import redis

from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.settings import Settings
from orchestrator.worker import networks
from tests.integration.harness import REDIS_URL


@pytest.mark.slow
def test_one_host_holds_500_concurrent_session_networks(
    services: None, docker_client: docker.DockerClient
) -> None:
    host = f"it-net-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env({}, host_name=host, redis_url=REDIS_URL)
    r = redis.Redis.from_url(REDIS_URL)
    sessions = [f"n{index:03d}-{uuid.uuid4().hex[:6]}" for index in range(500)]
    label = {"label": ["orchestrator.managed=true", f"orchestrator.host={host}"]}
    engine = DockerEngine(docker_client)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(
                pool.map(lambda s: networks.ensure_network(engine, r, settings, s), sessions)
            )
        created_seconds = time.monotonic() - started
        assert len({n.id for n in made}) == 500
        listed = docker_client.networks.list(filters=label)
        assert len(listed) == 500
        subnets = {n.attrs["IPAM"]["Config"][0]["Subnet"] for n in listed}
        assert len(subnets) == 500  # no two sessions share a subnet
        assert all(n.attrs["Internal"] for n in listed)
        print(f"500 session networks created in {created_seconds:.1f} s")
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            removed = sum(
                pool.map(lambda s: networks.remove_network(engine, r, settings, s), sessions)
            )
    assert removed == 500
    assert docker_client.networks.list(filters=label) == []
    assert r.keys(f"orch:subnet:{host}:*") == []  # every subnet went back to the pool
