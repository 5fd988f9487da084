"""Two Docker hosts on one machine: host B is a network namespace with its own dockerd and
its own worker (scripts/hostb.sh). Sessions stick to one host; both hosts get used."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    REDIS_URL,
    ROOT,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    gone,
    have,
    listed,
    managed_leftovers,
    require,
)
from tests.integration.test_relics import relic

HOSTB_SOCKET = "unix:///var/tmp/orchestrator/hostb/docker.sock"
BROKER_IP = "10.254.0.1"

pytestmark = pytest.mark.multihost


def hostb_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "hostb.sh"), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def host_b(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, docker.DockerClient]]:
    require(have("nsenter") and have("ip"), "nsenter and ip (for the second Docker host)")
    up = hostb_script("up")
    require(up.returncode == 0, f"a second Docker host (scripts/hostb.sh up: {up.stderr[-800:]})")
    engine = docker.DockerClient(base_url=HOSTB_SOCKET)
    name = f"it-b-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    url = REDIS_URL.replace("127.0.0.1", BROKER_IP).replace("localhost", BROKER_IP)
    env = {"ORCHESTRATOR_BROKER_URL": url, "ORCHESTRATOR_RESULT_BACKEND": url}
    process = WorkerProcess(
        name,
        tmp_path_factory.mktemp("logs-b"),
        env=env,
        netns="hostb",
        docker_host=HOSTB_SOCKET,
    )
    try:
        process.start()
        yield process, engine
    finally:
        process.stop()
        force_remove_managed(engine, name)
        engine.close()
        hostb_script("down")


def start_session(client: OrchestratorClient, session_id: str) -> dict[str, Any]:
    first = client.start_relic(relic(session_id, "api"), timeout=120)
    second = client.start_relic(relic(session_id, "cache"), timeout=120)
    probe = client.run_tool(
        {
            "tool_name": "probe",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "network_mode": "session",
            "command": ["sh", "-c", "wget -qO- http://api:8000/index.html http://cache:8000/"],
        },
        timeout=120,
    )
    return {"hosts": {first.host, second.host}, "probe": probe}


def test_sessions_stick_to_one_host_and_both_hosts_are_used(
    client: OrchestratorClient,
    host_b: tuple[WorkerProcess, docker.DockerClient],
    docker_client: docker.DockerClient,
) -> None:
    worker_b, engine_b = host_b
    sessions = [f"mh-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
            outcomes = list(pool.map(lambda s: start_session(client, s), sessions))
        used = set()
        for outcome in outcomes:
            assert len(outcome["hosts"]) == 1, outcome["hosts"]  # one host per session
            used |= outcome["hosts"]
            assert outcome["probe"].status == "succeeded", outcome["probe"]
            assert "hello from api" in outcome["probe"].stdout
            assert outcome["probe"].host in outcome["hosts"]  # the tool ran on the session's host
        assert used == {client.settings.host_name, worker_b.host_name}, used
        for outcome in outcomes:  # each probe's container goes right after its result
            probe = outcome["probe"]
            engine = engine_b if probe.host == worker_b.host_name else docker_client
            name = {"name": f"orch-tool-{probe.execution_id}"}
            assert gone(lambda: listed(engine, name)) == []  # noqa: B023
        # Stats of every managed container on both hosts, merged into one report.
        stats = client.stats(timeout=120)
        assert used <= set(stats.hosts)
        ours = [c for c in stats.containers if c.session_id in sessions]
        assert {c.host for c in ours} == used
        assert len(ours) == 2 * len(sessions)
        assert all(stats.sessions[s]["containers"] == 2 for s in sessions), stats.sessions
    finally:
        reports = [client.cleanup_session(s, timeout=120) for s in sessions]
    assert all(r.errors == [] for r in reports), reports
    assert sum(r.containers_removed for r in reports) == 2 * len(sessions)
    assert managed_leftovers(engine_b, worker_b.host_name) == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }
    assert managed_leftovers(docker_client, client.settings.host_name)["networks"] == []


def test_a_task_that_lands_on_the_wrong_host_forwards_itself(
    client: OrchestratorClient,
    host_b: tuple[WorkerProcess, docker.DockerClient],
) -> None:
    worker_b, _ = host_b
    session_id = f"fw-{uuid.uuid4().hex[:8]}"
    try:
        info = client.start_relic(relic(session_id, "api"), timeout=120)
        other = worker_b.host_name if info.host != worker_b.host_name else client.settings.host_name
        tool = {
            "tool_name": "probe",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "network_mode": "session",
            "command": ["sh", "-c", "wget -qO- http://api:8000/index.html"],
        }
        # Sent straight to the other host's queue: it must forward to the owner.
        sent = client.app.send_task(
            "orchestrator.tools.execute", args=[tool], queue=f"host.{other}"
        )
        result = sent.get(timeout=120)
        assert result["host"] == info.host
        assert result["stdout"] == "hello from api\n"
        assert result["execution_id"] == sent.id
        listed = client.list_relics()
        assert session_id in {r.session_id for r in listed}
    finally:
        client.cleanup_session(session_id, timeout=120)
