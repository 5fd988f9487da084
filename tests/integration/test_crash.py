"""Crash safety: a worker killed mid-run, a worker frozen past its lease, a run that
outlives the visibility timeout, and a delayed retry held by a worker that is killed."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from orchestrator import OrchestratorClient
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    TEST_IMAGE,
    ContainerEvents,
    CountedRun,
    WorkerProcess,
    deliveries,
    force_remove_managed,
    gone,
    listed,
    wait_log,
    wait_running,
)


@pytest.fixture
def crash_host(docker_client: docker.DockerClient) -> Iterator[str]:
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
    first = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    try:
        run = CountedRun.send(client, docker_client, crash_host, shared_dir, 6)
        wait_running(client, run.sent.id)
        first.kill()  # kill -9 the whole worker while the tool runs
        killed_at = time.monotonic()
        second = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
        try:
            result = run.sent.get(timeout=90)
            assert time.monotonic() - killed_at < 60
        finally:
            second.stop()
    finally:
        first.kill()
    run.assert_ran_once(result)
    label = {"label": f"orchestrator.execution={run.sent.id}"}
    assert gone(lambda: listed(docker_client, label)) == []


def test_a_worker_frozen_past_its_lease_keeps_its_run_and_nothing_runs_beside_it(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    shared_dir: Path,
    crash_host: str,
    tmp_path: Path,
) -> None:
    """A worker starved on a loaded machine (here SIGSTOPped for 10 s) lets its 6 s lease
    lapse while it still runs the tool. The other worker's reaper sees the lease free but
    the holder's liveness mark (3 leases) still there: it does not re-enqueue the run, and
    the holder takes its lease back when it wakes. Before that mark existed, the reaper
    re-enqueued the run at once and a second attempt ran beside the first."""
    holder = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    other = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    try:
        run = CountedRun.send(client, docker_client, crash_host, shared_dir, 14)
        wait_running(client, run.sent.id)
        ran = [p for p in (holder, other) if deliveries(p, run.sent.id)]
        assert len(ran) == 1, "one worker took the run"
        frozen, watcher = ran[0], holder if ran[0] is other else other
        os.killpg(frozen.pid, signal.SIGSTOP)
        try:
            time.sleep(10)  # the lease (6 s) lapses; the reaper (every 1 s) looks at it
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)
        result = run.sent.get(timeout=60)
        time.sleep(8)  # room for a late rerun to show
    finally:
        holder.stop()
        other.stop()
    run.assert_ran_once(result)
    # Any worker's reaper (this suite's other workers share the registry) re-enqueues on
    # host.<crash host>, where only the watcher could take it while the holder was frozen.
    assert deliveries(watcher, run.sent.id) == 0, watcher.log()
    assert b"had lapsed; taken back" in frozen.log_bytes(), frozen.log()


def test_run_outliving_the_visibility_timeout_is_redelivered_and_not_run_twice(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    shared_dir: Path,
    crash_host: str,
    tmp_path: Path,
) -> None:
    """The Redis transport redelivers a message left unacknowledged past the visibility
    timeout: a consumer's sweep (kombu's ``QoS.restore_visible``) moves every entry of the
    ``unacked`` hash whose delivery time in ``unacked_index`` is older than the timeout of
    *that consumer's* transport options back to its queue, under the ``unacked_mutex`` lock.
    kombu sweeps every ``unacked_restore_interval`` x ``unacked_restore_throttle`` seconds
    (10 x 10 by default); the worker's options sweep every tenth of the timeout, so here,
    with a 10 s timeout, the worker's own sweep redelivers the 30 s run's message to itself
    at ~11 s. The second delivery meets the lease, is ignored, and the tool runs once."""
    env = {**worker_env, "ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "10"}
    process = WorkerProcess(crash_host, tmp_path, env=env).start()
    try:
        run = CountedRun.send(client, docker_client, crash_host, shared_dir, 30)
        wait_running(client, run.sent.id)
        wait_log(process, run.sent.id, "received", 2, timeout=25)  # the sweep's redelivery
        wait_log(process, run.sent.id, "ignored", 1, timeout=10)
        assert client.app.AsyncResult(run.sent.id).state == "RUNNING"  # the first still runs
        result = run.sent.get(timeout=120)
        time.sleep(8)  # past the 6 s lease and the reaper: room for a late rerun to show
    finally:
        process.stop()
    run.assert_ran_once(result)
    assert deliveries(process, run.sent.id, "succeeded in") == 1, process.log()


def test_a_delayed_retry_held_by_a_killed_worker_is_redelivered_after_the_timeout(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    worker_env: dict[str, str],
    shared_dir: Path,
    crash_host: str,
    tmp_path: Path,
) -> None:
    """A message with a countdown (as Celery's retry of a run whose engine was unreachable)
    waits, unacknowledged, in the memory of the worker that received it, and no run is
    registered yet for the reaper to resume. That worker is killed: only the broker's
    visibility timeout brings the message back, and the next worker's sweep does it."""
    env = {**worker_env, "ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "10"}
    first = WorkerProcess(crash_host, tmp_path, env=env).start()
    try:
        run = CountedRun.send(client, docker_client, crash_host, shared_dir, 1, countdown=15)
        wait_log(first, run.sent.id, "received", 1, timeout=20)
        first.kill()  # kill -9 while it holds the message until its countdown ends
        killed_at = time.monotonic()
        second = WorkerProcess(crash_host, tmp_path, env=env).start()
        try:
            result = run.sent.get(timeout=90)
            waited = time.monotonic() - killed_at
            time.sleep(8)  # room for a late rerun to show
        finally:
            second.stop()
    finally:
        first.kill()
    run.assert_ran_once(result)
    assert waited < 60, waited
    assert deliveries(second, run.sent.id) >= 1, second.log()


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
    relic_id = str(uuid.uuid4())
    events = ContainerEvents(docker_client, f"orchestrator.relic={relic_id}")
    first = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    try:
        sent = client.app.send_task(
            "orchestrator.relics.start",
            args=[request],
            queue=f"host.{crash_host}",
            task_id=relic_id,
        )
        name = f"orch-relic-{len(session_id)}-{session_id}-slow"
        deadline = time.monotonic() + 30
        while not listed(docker_client, {"name": name}):
            assert time.monotonic() < deadline, "the relic container never appeared"
            time.sleep(0.1)
        first.kill()  # mid-start: the container exists, the health wait is under way
        second = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
        try:
            info = sent.get(timeout=90)
            assert info["status"] == "running" and info["healthy"] is True
            assert info["relic_id"] == sent.id
            events.close()
            assert events.count("create", "orchestrator.relic", relic_id) == 1  # not made twice
        finally:
            client.cleanup_session(session_id, timeout=120)
            second.stop()
    finally:
        first.kill()
