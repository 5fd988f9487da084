"""Promises of the Guarantees table (docs/guarantees.md) that had no test of their own.

Two workers with different host names share the one Docker engine of this machine: that is
enough for routing (each consumes its own ``host.<name>`` queue) without a second engine.
The engine-lost test reaches the engine through a proxy it cuts (tests/integration/proxy.py):
the system dockerd is never stopped, other sessions use it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.state import keys
from tests.integration.conftest import USED_HOSTS, make_client
from tests.integration.harness import (
    REDIS_URL,
    ContainerEvents,
    CountedRun,
    WorkerProcess,
    force_remove_managed,
    gone,
    listed,
    managed_leftovers,
    tool,
    wait_running,
)
from tests.integration.proxy import EngineProxy
from tests.integration.test_relics import relic, session_objects

EXECUTE = "orchestrator.tools.execute"
CANCEL = "orchestrator.tools.cancel"
NOTHING_LEFT: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


def new_host(prefix: str) -> str:
    name = f"it-{prefix}-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    return name


@pytest.fixture(scope="module")
def two_hosts(
    services: None,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """Workers of two host names on the same engine."""
    logs = tmp_path_factory.mktemp("logs-promises")
    a = WorkerProcess(new_host("pa"), logs, env=worker_env)
    b = WorkerProcess(new_host("pb"), logs, env=worker_env)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for process in (a, b):
            process.stop()
            force_remove_managed(docker_client, process.host_name)


@pytest.fixture
def pclient(two_hosts: tuple[WorkerProcess, WorkerProcess]) -> Iterator[OrchestratorClient]:
    c = make_client(two_hosts[0].host_name)
    yield c
    c.close()


def test_cancel_sent_to_another_host_stops_the_run(
    two_hosts: tuple[WorkerProcess, WorkerProcess],
    pclient: OrchestratorClient,
    docker_client: docker.DockerClient,
) -> None:
    a, b = two_hosts
    sent = pclient.app.send_task(
        EXECUTE, args=[tool("cx", "sleep 60; echo never")], queue=f"host.{a.host_name}"
    )
    wait_running(pclient, sent.id)
    started = time.monotonic()
    # The cancel task is handled by host B's worker; the run lives on host A.
    answer = pclient.app.send_task(CANCEL, args=[sent.id], queue=f"host.{b.host_name}")
    assert answer.get(timeout=30)["cancelled"] is True
    result = sent.get(timeout=30)
    assert result["status"] == "cancelled", result
    assert result["host"] == a.host_name
    assert time.monotonic() - started < 10
    label = {"label": f"orchestrator.execution={sent.id}"}
    assert gone(lambda: listed(docker_client, label)) == []


def test_a_run_cancelled_before_any_worker_took_it_never_starts(
    two_hosts: tuple[WorkerProcess, WorkerProcess],
    pclient: OrchestratorClient,
    worker_env: dict[str, str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    idle = new_host("pidle")  # no worker consumes host.<idle> yet
    task_id = str(uuid.uuid4())
    events = ContainerEvents(docker_client, f"orchestrator.execution={task_id}")
    handle_sent = pclient.app.send_task(
        EXECUTE, args=[tool("rv", "echo ran")], queue=f"host.{idle}", task_id=task_id
    )
    answer = pclient.cancel_tool(handle_sent.id)
    assert answer["cancelled"] is True and answer["status"] == "cancelled", answer
    late = WorkerProcess(idle, tmp_path, env=worker_env).start()
    try:
        deadline = time.monotonic() + 30
        while handle_sent.state not in ("SUCCESS", "REVOKED", "FAILURE"):
            assert time.monotonic() < deadline, handle_sent.state
            time.sleep(0.2)
        view = pclient.get_execution(handle_sent.id)
        assert getattr(view, "status", None) == "cancelled", view
    finally:
        late.stop()
        force_remove_managed(docker_client, idle)
    events.close()
    assert events.seen == []  # never made, never started


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_engine_lost_mid_run_the_run_completes_once_it_is_back(
    services: None,
    worker_env: dict[str, str],
    shared_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """The promise (tasks/tools.py RETRY, worker/execution.py): DockerUnavailable mid-run
    abandons the attempt without reaping the container, Celery retries with backoff, and the
    retry attaches to the still-running container. Back within the retries: the run succeeds
    and its tool started once; gone for longer: the run fails naming the engine."""
    name = new_host("peng")
    proxy = EngineProxy().start()
    process = WorkerProcess(name, tmp_path, env=worker_env, docker_host=proxy.url)
    client = make_client(name)
    try:
        process.start()
        run = CountedRun.send(client, docker_client, name, shared_dir, 8)
        wait_running(client, run.sent.id)
        proxy.cut()
        time.sleep(5)
        proxy.restore()
        run.assert_ran_once(run.sent.get(timeout=150))
        assert f"[{run.sent.id}] retry:".encode() in process.log_bytes(), process.log()
        assert process.proc is not None and process.proc.poll() is None
    finally:
        client.close()
        process.stop()
        proxy.close()
        force_remove_managed(docker_client, name)


def test_two_starts_racing_for_a_new_session_end_on_one_host(
    two_hosts: tuple[WorkerProcess, WorkerProcess],
    pclient: OrchestratorClient,
    docker_client: docker.DockerClient,
) -> None:
    a, b = two_hosts
    session_id = f"race-{uuid.uuid4().hex[:8]}"
    try:
        sends = [
            (relic(session_id, "api"), f"host.{a.host_name}"),
            (relic(session_id, "cache"), f"host.{b.host_name}"),
        ]
        with ThreadPoolExecutor(2) as pool:
            sent = list(
                pool.map(
                    lambda s: pclient.app.send_task(
                        "orchestrator.relics.start", args=[s[0]], queue=s[1]
                    ),
                    sends,
                )
            )
        infos = [s.get(timeout=120) for s in sent]
        owner = redis.Redis.from_url(REDIS_URL).get(keys.session_owner(session_id))
        assert owner is not None
        assert {i["host"] for i in infos} == {owner.decode()}, infos
        label = {"label": f"orchestrator.session={session_id}"}
        hosts = {c.labels.get("orchestrator.host") for c in listed(docker_client, label)}
        assert hosts == {owner.decode()}
        assert all(i["healthy"] for i in infos), infos
    finally:
        # Every live host cleans up (both here): on one shared engine they may race to remove
        # the same container ("removal already in progress"), which separate engines cannot.
        pclient.cleanup_session(session_id, timeout=120)
    assert session_objects(docker_client, session_id) == NOTHING_LEFT


def test_janitor_removes_a_session_volume_whose_session_is_gone(
    two_hosts: tuple[WorkerProcess, WorkerProcess],
    pclient: OrchestratorClient,
    docker_client: docker.DockerClient,
) -> None:
    a, _ = two_hosts
    session_id = f"orph-{uuid.uuid4().hex[:8]}"
    run = pclient.app.send_task(
        EXECUTE,
        args=[
            tool(session_id, "echo x > /data/x", volumes=[{"source": "data", "target": "/data"}])
        ],
        queue=f"host.{a.host_name}",
    )
    assert run.get(timeout=60)["status"] == "succeeded"
    label = {"label": f"orchestrator.session={session_id}"}
    assert len(docker_client.volumes.list(filters=label)) == 1
    assert gone(lambda: listed(docker_client, label)) == []  # its tool's container went
    try:
        # The registry forgets the session (its end was recorded, its host was not visited).
        registry = redis.Redis.from_url(REDIS_URL)
        registry.srem(keys.SESSIONS, session_id)
        report = pclient.app.send_task(
            "orchestrator.janitor.host", queue=f"host.{a.host_name}"
        ).get(timeout=120)
        assert report["volumes_removed"] >= 1, report
        assert docker_client.volumes.list(filters=label) == []
    finally:
        pclient.cleanup_session(session_id, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_run_whose_host_died_resumes_on_another_host(
    services: None,
    worker_env: dict[str, str],
    shared_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """Promise: the reaper re-enqueues a run whose lease expired on its host's queue while that
    host is alive, else on the shared ``tools`` queue, where any host takes it. Here host A's
    worker is killed for good; host B (same engine) resumes the run and attaches to the one
    container. (On a separate engine B could not see A's container: see docs/guarantees.md.)"""
    a_name, b_name = new_host("pdead"), new_host("pheir")
    first = WorkerProcess(a_name, tmp_path, env=worker_env)
    heir = WorkerProcess(b_name, tmp_path, env=worker_env)
    client = make_client(a_name)
    try:
        first.start()
        heir.start()
        run = CountedRun.send(client, docker_client, a_name, shared_dir, 8)
        wait_running(client, run.sent.id)
        first.kill()
        killed_at = time.monotonic()
        result = run.sent.get(timeout=90)
        assert time.monotonic() - killed_at < 60
        assert result["host"] != a_name  # the heir, or any other live host
        run.assert_ran_once(result)
    finally:
        client.close()
        first.kill()
        heir.stop()
        for host in (a_name, b_name):
            force_remove_managed(docker_client, host)
    for host in (a_name, b_name):
        assert managed_leftovers(docker_client, host) == NOTHING_LEFT
