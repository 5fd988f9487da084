"""The janitor (run by Celery beat) leaves nothing behind that nobody owns."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.errors import HostUnavailable
from tests.integration.harness import (
    REDIS_URL,
    ROOT,
    TEST_IMAGE,
    WorkerProcess,
    gone,
    listed,
    settings_env,
)
from tests.integration.test_relics import relic


def run_janitor(client: OrchestratorClient) -> dict[str, Any]:
    return client.app.send_task("orchestrator.janitor.run").get(timeout=120)


def managed_container(engine: docker.DockerClient, host: str, **labels: str) -> Any:
    base = {
        "orchestrator.managed": "true",
        "orchestrator.host": host,
        "orchestrator.session": "janitor-test",
    }
    return engine.containers.create(
        TEST_IMAGE,
        ["sleep", "300"],
        labels={**base, **labels},
        name=f"janitor-{uuid.uuid4().hex[:8]}",
    )


def exists(engine: docker.DockerClient, container: Any) -> bool:
    try:
        engine.containers.get(container.id)
        return True
    except docker.errors.NotFound:
        return False


def test_reaps_containers_past_their_deadline_and_tools_with_a_final_result(
    client: OrchestratorClient, docker_client: docker.DockerClient, worker: WorkerProcess
) -> None:
    overdue = managed_container(
        docker_client,
        worker.host_name,
        **{"orchestrator.kind": "tool", "orchestrator.deadline": str(int(time.time()) - 5)},
    )
    finished = client.run_tool(
        {"tool_name": "t", "session_id": "janitor-test", "image": TEST_IMAGE, "command": ["true"]},
        timeout=60,
    )
    orphan = managed_container(
        docker_client,
        worker.host_name,
        **{
            "orchestrator.kind": "tool",
            "orchestrator.execution": finished.execution_id,
            "orchestrator.deadline": str(int(time.time()) + 3600),
        },
    )
    fresh = managed_container(
        docker_client,
        worker.host_name,
        **{"orchestrator.kind": "tool", "orchestrator.deadline": str(int(time.time()) + 3600)},
    )
    try:
        report = run_janitor(client)
        reasons = {c["name"]: c["reason"] for c in report["containers_removed"]}
        assert reasons[overdue.name] == "past its deadline"
        assert reasons[orphan.name] == "its execution has a final result"
        assert fresh.name not in reasons
        assert not exists(docker_client, overdue) and not exists(docker_client, orphan)
        assert exists(docker_client, fresh)
    finally:
        fresh.remove(force=True)


def test_session_past_its_ttl_is_cleaned_and_the_report_says_which_limit(
    client: OrchestratorClient, docker_client: docker.DockerClient, session_id: str
) -> None:
    info = client.start_relic(relic(session_id, "svc"), timeout=60)
    r = redis.Redis.from_url(REDIS_URL)
    r.hset(f"orch:session:{session_id}:expiry", "expires_at", time.time() - 1)
    report = run_janitor(client)
    assert report["sessions_ended"][session_id] == "ttl"
    assert any(c["name"] == info.container_name for c in report["containers_removed"])
    label = {"label": f"orchestrator.session={session_id}"}
    assert gone(lambda: listed(docker_client, label)) == []
    assert docker_client.networks.list(filters=label) == []
    assert client.list_relics(session_id) == []


def test_keepalive_is_capped_by_the_hard_maximum_lifetime(
    client: OrchestratorClient, session_id: str
) -> None:
    client.start_relic(relic(session_id, "svc"), timeout=60)
    r = redis.Redis.from_url(REDIS_URL)
    lifetime = client.settings.session_max_lifetime_seconds
    created = time.time() - lifetime - 10
    r.hset(f"orch:session:{session_id}:expiry", "created_at", created)
    touched = client.touch_session(session_id, 3600)
    assert touched["expires_at"] == pytest.approx(created + lifetime, abs=1)
    report = run_janitor(client)
    assert report["sessions_ended"][session_id] == "max_lifetime"


def test_touch_extends_a_live_session(client: OrchestratorClient, session_id: str) -> None:
    client.start_relic(relic(session_id, "svc"), timeout=60)
    try:
        before = time.time()
        touched = client.touch_session(session_id, 7200)
        assert touched["expires_at"] >= before + 7200 - 1
        report = run_janitor(client)
        assert session_id not in report["sessions_ended"]
    finally:
        client.cleanup_session(session_id)


def test_empty_managed_networks_are_removed(
    client: OrchestratorClient, docker_client: docker.DockerClient, worker: WorkerProcess
) -> None:
    network = docker_client.networks.create(
        f"session_janitor-{uuid.uuid4().hex[:6]}",
        labels={"orchestrator.managed": "true", "orchestrator.host": worker.host_name},
        internal=True,
    )
    time.sleep(1.5)  # older than the test workers' network grace
    run_janitor(client)
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network.id)


def test_messages_on_a_dead_hosts_queue_fail_clearly(client: OrchestratorClient) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(REDIS_URL).sadd("orch:hosts", ghost)
    stuck = client.app.send_task(
        "orchestrator.relics.info", args=["no-such-relic"], queue=f"host.{ghost}"
    )
    report = run_janitor(client)
    assert stuck.id in report["messages_failed"]
    with pytest.raises(HostUnavailable, match=ghost):
        stuck.get(timeout=30)


def test_celery_beat_runs_the_janitor(worker: WorkerProcess, tmp_path: Path) -> None:
    env = {
        **dict(__import__("os").environ),
        **settings_env(worker.host_name),
        "ORCHESTRATOR_JANITOR_INTERVAL_SECONDS": "1",
    }
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "-l",
                "info",
                "-s",
                str(tmp_path / "schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline and b"orchestrator.janitor.run" not in log.read_bytes()
            ):
                time.sleep(0.3)
        finally:
            beat.terminate()
            beat.wait(10)
    assert b"Sending due task orchestrator-janitor (orchestrator.janitor.run)" in log.read_bytes()
