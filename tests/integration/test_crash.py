"""Crash safety: a worker killed mid-run, and a run that outlives the visibility timeout."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import docker
import kombu
import pytest

from orchestrator import OrchestratorClient
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import BROKER_URL, TEST_IMAGE, WorkerProcess, force_remove_managed


def counting_tool(session_id: str, runs: Path, seconds: int) -> dict[str, Any]:
    runs.mkdir(exist_ok=True)
    runs.chmod(0o777)
    return {
        "tool_name": "counted",
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": [
            "sh",
            "-c",
            f"echo start >> /runs/count; sleep {seconds}; echo '{{\"ok\": 1}}'",
        ],
        "volumes": [{"source": str(runs), "target": "/runs"}],
    }


def creations(engine: docker.DockerClient, execution_id: str, since: float) -> int:
    events = engine.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={
            "type": "container",
            "event": "create",
            "label": f"orchestrator.execution={execution_id}",
        },
    )
    return sum(1 for _ in events)


def deliveries(worker: WorkerProcess, task_id: str, what: str = "received") -> int:
    """How many times a worker's log says a delivery of ``task_id`` was ``what``
    (Celery logs ``received``, ``ignored``, ``succeeded in`` ... at level info)."""
    return worker.log_bytes().count(f"[{task_id}] {what}".encode())


def wait_log(worker: WorkerProcess, task_id: str, what: str, times: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while deadline > time.monotonic():
        if deliveries(worker, task_id, what) >= times:
            return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} was not {what} {times} times; log:\n{worker.log()}")


def restore_unacked_older_than(seconds: int) -> None:
    """What a Redis-transport consumer does periodically: requeue unacknowledged messages
    delivered more than ``seconds`` ago (the visibility timeout)."""
    if not BROKER_URL.startswith("redis"):
        pytest.skip("the visibility timeout is a Redis-transport behaviour")
    with kombu.Connection(BROKER_URL, transport_options={"visibility_timeout": seconds}) as conn:
        conn.default_channel.qos.restore_visible(num=1000, interval=1)


def wait_running(client: OrchestratorClient, execution_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.app.AsyncResult(execution_id).state == "RUNNING":
            return
        time.sleep(0.1)
    raise AssertionError("the run never reached RUNNING")


@pytest.fixture
def crash_host(docker_client: docker.DockerClient) -> Any:
    name = f"it-crash-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    yield name
    force_remove_managed(docker_client, name)


def test_worker_killed_mid_run_resumes_and_runs_the_tool_once(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    shared_dir: Path,
    crash_host: str,
    tmp_path: Path,
) -> None:
    runs = shared_dir / f"crash-{uuid.uuid4().hex[:6]}"
    since = time.time() - 1
    first = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    try:
        sent = client.app.send_task(
            "orchestrator.tools.execute",
            args=[counting_tool("crash", runs, 6)],
            queue=f"host.{crash_host}",
        )
        wait_running(client, sent.id)
        first.kill()  # kill -9 the whole worker while the tool runs
        killed_at = time.monotonic()
        second = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
        try:
            result = sent.get(timeout=90)
            assert time.monotonic() - killed_at < 60
        finally:
            second.stop()
    finally:
        first.kill()
    assert result["status"] == "succeeded"
    assert result["result"] == {"ok": 1}
    assert (runs / "count").read_text() == "start\n"  # the tool started exactly once
    assert creations(docker_client, sent.id, since) == 1  # one container ever created
    assert (
        docker_client.containers.list(
            all=True, filters={"label": f"orchestrator.execution={sent.id}"}
        )
        == []
    )


@pytest.mark.xfail(
    reason="open: no redelivery is observed after the visibility timeout, even with an explicit "
    "kombu restore scan (README Guarantees, row 'visibility timeout': OPEN)",
    strict=False,
)
def test_run_outliving_the_visibility_timeout_is_not_run_twice(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    shared_dir: Path,
    crash_host: str,
    tmp_path: Path,
) -> None:
    runs = shared_dir / f"vis-{uuid.uuid4().hex[:6]}"
    since = time.time() - 1
    env = {**worker_env, "ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "10"}
    process = WorkerProcess(crash_host, tmp_path, env=env).start()
    try:
        sent = client.app.send_task(
            "orchestrator.tools.execute",
            args=[counting_tool("vis", runs, 30)],
            queue=f"host.{crash_host}",
        )
        # The broker redelivers the unacknowledged message once it is older than the short
        # visibility timeout. kombu 5.7 scans for such messages only every ~100 s
        # (unacked_restore_interval x unacked_restore_throttle), so the test runs the scan a
        # consumer runs, with the worker's 10 s timeout, once the run has outlived it: the
        # run is still going, so the second delivery reaches the worker, meets the lease
        # and is dropped.
        wait_running(client, sent.id)
        time.sleep(max(0.0, since + 1 + 12 - time.time()))
        restore_unacked_older_than(10)
        wait_log(process, sent.id, "received", 2, timeout=30)
        wait_log(process, sent.id, "ignored", 1, timeout=30)
        result = sent.get(timeout=120)
        time.sleep(8)  # past the 6 s lease and the reaper: room for a late rerun to show
    finally:
        process.stop()
    assert result["status"] == "succeeded"
    assert deliveries(process, sent.id, "succeeded in") == 1, process.log()
    assert (runs / "count").read_text() == "start\n"
    assert creations(docker_client, sent.id, since) == 1


def test_worker_killed_during_a_relic_start_ends_with_a_healthy_relic(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    crash_host: str,
    tmp_path: Path,
) -> None:
    session_id = f"crash-relic-{uuid.uuid4().hex[:6]}"
    slow_start = "sleep 6; mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8000 -h /www"
    request = {
        "relic_name": "slow",
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", slow_start],
        "health_timeout_seconds": 60,
    }
    since = time.time() - 1
    first = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    try:
        sent = client.app.send_task(
            "orchestrator.relics.start", args=[request], queue=f"host.{crash_host}"
        )
        name = f"orch-relic-{len(session_id)}-{session_id}-slow"
        deadline = time.monotonic() + 30
        while not docker_client.containers.list(all=True, filters={"name": name}):
            assert time.monotonic() < deadline, "the relic container never appeared"
            time.sleep(0.1)
        first.kill()  # mid-start: the container exists, the health wait is under way
        second = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
        try:
            info = sent.get(timeout=90)
            assert info["status"] == "running" and info["healthy"] is True
            assert info["relic_id"] == sent.id
            created = docker_client.events(
                since=int(since),
                until=int(time.time()) + 1,
                decode=True,
                filters={
                    "type": "container",
                    "event": "create",
                    "label": f"orchestrator.relic={sent.id}",
                },
            )
            assert sum(1 for _ in created) == 1  # resumed, not made twice
        finally:
            client.cleanup_session(session_id, timeout=120)
            second.stop()
    finally:
        first.kill()
