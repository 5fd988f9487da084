"""The warm pool: pre-started containers that serve exactly one run each."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.client import files as file_calls
from orchestrator.models import FileContent, ToolExecutionRequest, ToolExecutionResult
from orchestrator.state import keys
from tests.integration.conftest import USED_HOSTS, make_client
from tests.integration.harness import (
    REDIS_URL,
    TEST_IMAGE,
    WorkerProcess,
    assert_only_its_loopback,
    force_remove_managed,
    gateway_listener,
    gone,
    listener_on,
    no_network_probe,
    wait_running,
)

POOL_SIZE = 2
LIMITS = {"memory_mb": 96, "cpu_limit": 0.5}


def pool_containers(engine: docker.DockerClient, host: str) -> list[Any]:
    labels = ["orchestrator.kind=pool", f"orchestrator.host={host}"]
    # sparse: no inspect per container, which would race with the pool discarding them
    return engine.containers.list(all=True, sparse=True, filters={"label": labels})


def wait_for_pool(engine: docker.DockerClient, host: str, size: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([c for c in pool_containers(engine, host) if c.status == "running"]) == size:
            return
        time.sleep(0.2)
    raise AssertionError(f"pool never reached {size}: {pool_containers(engine, host)}")


def used_ones_gone(engine: docker.DockerClient, host: str, used: set[str]) -> bool:
    """True once none of the ``used`` containers is among the pool's (a used one is removed
    behind the runs; until then it still reads as a pool container)."""
    return gone(lambda: [c for c in pool_containers(engine, host) if c.id in used]) == []


def wait_idle(host: str, count: int = POOL_SIZE, timeout: float = 30) -> None:
    """Wait until the pool's idle set holds ``count`` containers (used ones not counted)."""
    registry = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = registry.keys(f"{keys.PREFIX}pool:{host}:*")
        if sum(int(registry.scard(k)) for k in found) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the pool of {host} never held {count} idle containers")


def full_pool(engine: docker.DockerClient, host: str) -> set[str]:
    """The ids of the pool's idle containers, once it is full again."""
    wait_for_pool(engine, host, POOL_SIZE)
    return {c.id for c in pool_containers(engine, host)}


@pytest.fixture(scope="module")
def pooled(
    services: None, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[tuple[OrchestratorClient, str]]:
    host = f"it-pool-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    spec = [{"image": TEST_IMAGE, "size": POOL_SIZE, **LIMITS}]
    process = WorkerProcess(
        host, tmp_path_factory.mktemp("pool"), env={"ORCHESTRATOR_POOL": json.dumps(spec)}
    ).start()
    client = make_client(host)
    try:
        wait_for_pool(docker_client, host, POOL_SIZE)
        yield client, host
    finally:
        client.close()
        process.stop()
        undrained = [c.name for c in pool_containers(docker_client, host)]
        force_remove_managed(docker_client, host)  # records leftovers first (leak ledger)
        assert undrained == []  # the worker drained its pool


def pooled_tool(script: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool_name": "pooled",
        "session_id": "pool",
        "image": TEST_IMAGE,
        "command": ["sh", "-c", script],
        "resource_limits": dict(LIMITS),
        **extra,
    }


def send(client: OrchestratorClient, host: str, request: dict[str, Any]) -> Any:
    outcome = client.app.send_task(
        "orchestrator.tools.execute", args=[request], queue=f"host.{host}"
    )
    return outcome.get(timeout=60)


def test_a_matching_run_uses_a_pool_container_once_and_the_pool_refills(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = {c.id for c in pool_containers(docker_client, host)}
    first = send(
        client,
        host,
        pooled_tool('echo "{\\"who\\": \\"$WHO\\"}"; echo err >&2', parameters={"WHO": "pool"}),
    )
    second = send(client, host, pooled_tool("echo again"))
    assert first["status"] == "succeeded"
    assert first["result"] == {"who": "pool"}
    assert first["stderr"] == "err\n"
    assert first["container_id"] in idle  # it ran in a container made ahead of time
    assert second["container_id"] != first["container_id"]  # one run per container
    used = {first["container_id"], second["container_id"]}
    deadline = time.monotonic() + 30  # discarded in the background, off the hot path
    while used & {c.id for c in pool_containers(docker_client, host)}:
        assert time.monotonic() < deadline, "used pool containers were not discarded"
        time.sleep(0.2)
    wait_for_pool(docker_client, host, POOL_SIZE)


def test_a_pooled_run_has_only_its_own_loopback(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    """A pool container is made without the engine's network sandbox: its run sees a
    loopback of its own, where ``localhost`` resolves, and reaches none of this host's
    services (on the bridge gateway, or on the host's loopback)."""
    client, host = pooled
    idle = full_pool(docker_client, host)
    with gateway_listener(docker_client) as gateway, listener_on("127.0.0.1") as host_loopback:
        victims = [gateway, host_loopback]
        done = send(client, host, pooled_tool(no_network_probe(victims, "pooled")))
        assert done["container_id"] in idle  # it ran in the pool
        assert_only_its_loopback(done["stdout"], victims, "pooled")


def test_pooled_runs_report_failures_and_timeouts_like_cold_runs(
    pooled: tuple[OrchestratorClient, str],
) -> None:
    client, host = pooled
    wait_idle(host)
    failed = send(client, host, pooled_tool("echo bad >&2; exit 5"))
    assert (failed["status"], failed["exit_code"], failed["stderr"]) == ("failed", 5, "bad\n")
    limits = {**LIMITS, "timeout_seconds": 2}
    wait_idle(host)  # refilled behind the run (a run in progress holds it back up to 2 s)
    slow = send(client, host, pooled_tool("echo begun; sleep 60", resource_limits=limits))
    assert slow["status"] == "timed_out"
    assert slow["stdout"] == "begun\n"
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo "${#x}"'
    wait_idle(host)
    oom = send(client, host, pooled_tool(hog))
    assert (oom["status"], oom["exit_code"]) == ("oom_killed", 137)
    registry = redis.Redis.from_url(REDIS_URL)
    for run in (failed, slow, oom):  # each in a pool container, not a cold one
        assert registry.hget(f"orch:exec:{run['execution_id']}", "pooled") == b"1"


def test_pooled_runs_get_parameters_and_secrets_as_they_are(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    # Values pass through the pool agent's shell line: none may be read as shell syntax.
    client, host = pooled
    idle = full_pool(docker_client, host)
    hostile = 'it\'s "$(touch /tmp/owned)" `touch /tmp/owned` ${HOME} ;exit 3\nline two\n'
    script = 'printf "%s|" "$A" "$TOKEN"; test -e /tmp/owned && echo owned || echo clean'
    request = ToolExecutionRequest.model_validate(
        pooled_tool(script, parameters={"A": hostile}, secret_parameters={"TOKEN": "tok-9f8e7d6c"})
    )
    result = send(client, host, client._sealed(request))
    assert result["container_id"] in idle
    assert (result["status"], result["stdout"]) == ("succeeded", hostile + "|***|clean\n")
    assert result["stderr"] == ""  # the agent's acknowledgement is not the tool's output


def test_a_pooled_run_reads_its_stdin_to_the_end(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = full_pool(docker_client, host)
    text = "".join(f"line {n} ü '$(id)'\n" for n in range(40000))  # about 800 KB
    result = send(client, host, pooled_tool("md5sum", stdin=text))
    assert result["container_id"] in idle
    assert result["stdout"] == f"{hashlib.md5(text.encode()).hexdigest()}  -\n"  # noqa: S324


def test_a_pooled_run_gets_its_files_and_its_outputs_are_collected(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = full_pool(docker_client, host)
    data = bytes(range(256)) * 1024  # 256 KiB: it travels beside the message
    request = ToolExecutionRequest.model_validate(
        pooled_tool(
            "md5sum /in/data.bin; mkdir -p /out && head -c 300000 /dev/zero > /out/zeros",
            files=[FileContent.of("/in/data.bin", data, mode=0o640).model_dump(exclude_none=True)],
            collect=["/in/data.bin", "/out/zeros", "/out/none"],
        )
    )
    # as the client sends it: the file beside the message, in Redis
    stashed = file_calls.stash_run_files(request, client._run_stash)
    assert stashed.files[0].ref is not None
    outcome = send(client, host, client._sealed(stashed))
    assert outcome["container_id"] in idle and outcome["status"] == "succeeded", outcome
    assert outcome["stdout"] == f"{hashlib.md5(data).hexdigest()}  /in/data.bin\n"  # noqa: S324
    done = ToolExecutionResult.model_validate(outcome)
    assert done.missing_files == ["/out/none"]
    assert client.get_collected_file(done.execution_id, "/in/data.bin") == data
    assert client.get_collected_file(done.execution_id, "/out/zeros") == bytes(300000)
    got = done.collected("/in/data.bin")
    assert got is not None and got.mode == 0o640


def test_a_pooled_runs_file_where_a_directory_is_is_refused_and_its_container_discarded(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = full_pool(docker_client, host)
    request = pooled_tool("echo ran", files=[{"path": "/bin", "text": "not a directory"}])
    outcome = client.app.send_task(
        "orchestrator.tools.execute", args=[request], queue=f"host.{host}"
    )
    with pytest.raises(Exception, match="/bin is a directory"):
        outcome.get(timeout=60)
    deadline = time.monotonic() + 30  # the container it took is discarded, not leaked
    while len(idle & {c.id for c in pool_containers(docker_client, host)}) > POOL_SIZE - 1:
        assert time.monotonic() < deadline, "the pool container the refused run took was kept"
        time.sleep(0.2)
    wait_for_pool(docker_client, host, POOL_SIZE)


def test_a_pooled_run_is_cancelled(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = full_pool(docker_client, host)
    outcome = client.app.send_task(
        "orchestrator.tools.execute",
        args=[pooled_tool("echo begun; sleep 60")],
        queue=f"host.{host}",
    )
    wait_running(client, outcome.id)
    time.sleep(0.5)
    client.cancel_tool(outcome.id)
    result = outcome.get(timeout=30)
    assert (result["status"], result["stdout"]) == ("cancelled", "begun\n")
    assert result["container_id"] in idle


def test_a_pool_container_that_died_while_idle_sends_its_run_cold(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    wait_for_pool(docker_client, host, POOL_SIZE)
    dead = set()
    for container in pool_containers(docker_client, host):
        docker_client.api.kill(container.id)  # the agent dies before it was given a run
        dead.add(container.id)
    result = send(client, host, pooled_tool('echo "ran $N"', parameters={"N": 1}))
    assert (result["status"], result["stdout"]) == ("succeeded", "ran 1\n")
    assert result["container_id"] not in dead
    wait_for_pool(docker_client, host, POOL_SIZE)


def test_requests_that_do_not_match_the_pool_run_cold(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    client, host = pooled
    idle = {c.id for c in pool_containers(docker_client, host)}
    other = send(client, host, pooled_tool("echo cold", resource_limits={"memory_mb": 64}))
    assert other["stdout"] == "cold\n"
    assert other["container_id"] not in idle


def test_pool_containers_are_sandboxed(
    pooled: tuple[OrchestratorClient, str], docker_client: docker.DockerClient
) -> None:
    _, host = pooled
    checked = 0
    for sparse in pool_containers(docker_client, host):
        try:
            container = docker_client.containers.get(sparse.id)
        except docker.errors.NotFound:  # a used one the worker removed meanwhile
            continue
        checked += 1
        config = container.attrs["HostConfig"]
        assert config["CapDrop"] == ["ALL"]
        assert config["NetworkMode"] == "none"
        assert config["Memory"] == LIMITS["memory_mb"] * 1024 * 1024
        assert container.labels["orchestrator.managed"] == "true"
        assert float(container.labels["orchestrator.deadline"]) > time.time()
    assert checked > 0


def pool_worker(
    tmp_path: Any, docker_client: docker.DockerClient, env: dict[str, str]
) -> tuple[WorkerProcess, OrchestratorClient, str]:
    host = f"it-pool-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    process = WorkerProcess(host, tmp_path, env=env).start()
    return process, make_client(host), host


def stop_pool_worker(
    process: WorkerProcess, client: OrchestratorClient, host: str, engine: docker.DockerClient
) -> None:
    client.close()
    process.stop()
    undrained = [c.name for c in pool_containers(engine, host)]
    force_remove_managed(engine, host)
    assert undrained == []  # the worker drained its pools


def test_a_burst_larger_than_the_pool_runs_cold_past_it_and_never_times_out(
    services: None, tmp_path: Any, docker_client: docker.DockerClient
) -> None:
    env = {
        "ORCHESTRATOR_POOL": json.dumps([{"image": TEST_IMAGE, "size": 5, **LIMITS}]),
        "ORCHESTRATOR_WORKER_CONCURRENCY": "24",
    }
    process, client, host = pool_worker(tmp_path, docker_client, env)
    try:
        wait_for_pool(docker_client, host, 5)
        idle = {c.id for c in pool_containers(docker_client, host)}

        def call(n: int) -> Any:
            return send(client, host, pooled_tool(f'echo "{{\\"n\\": {n}}}"'))

        with ThreadPoolExecutor(max_workers=20) as threads:
            results = list(threads.map(call, range(20)))  # each waits 60 s at most

        assert [r["status"] for r in results] == ["succeeded"] * 20
        assert [r["result"] for r in results] == [{"n": n} for n in range(20)]
        used = [r["container_id"] for r in results]
        assert len(set(used)) == 20  # one container per run, warm or cold
        assert 1 <= len(idle & set(used)) <= 5  # the pool served what it held
        registry = redis.Redis.from_url(REDIS_URL)
        entries = [registry.hgetall(f"orch:exec:{r['execution_id']}") for r in results]
        made = [r for r, e in zip(results, entries, strict=True) if e.get(b"made_now")]
        # Misses while the other runs went on: containers made for them, run by their agent.
        assert made and all(r["container_id"] not in idle for r in made)
        assert all(entries[results.index(r)].get(b"pooled") == b"1" for r in made)
        wait_for_pool(docker_client, host, 5)  # and refilled behind the burst
        assert used_ones_gone(docker_client, host, set(used))
    finally:
        stop_pool_worker(process, client, host, docker_client)


def test_a_pool_grows_from_demand_alone_and_serves_the_next_calls(
    services: None, tmp_path: Any, docker_client: docker.DockerClient
) -> None:
    registry = redis.Redis.from_url(REDIS_URL)
    env = {"ORCHESTRATOR_POOL_MEMORY_MB": "1024"}  # no ORCHESTRATOR_POOL at all
    process, client, host = pool_worker(tmp_path, docker_client, env)
    try:
        assert pool_containers(docker_client, host) == []
        with ThreadPoolExecutor(max_workers=3) as threads:  # a burst of three calls
            first = list(threads.map(lambda _: send(client, host, pooled_tool("echo a")), range(3)))
        assert [r["status"] for r in first] == ["succeeded"] * 3
        # Misses while the others ran may have run in pool containers made for them: those
        # go behind the runs, and are not the pool's idle ones.
        assert used_ones_gone(docker_client, host, {r["container_id"] for r in first})
        wait_for_pool(docker_client, host, 3)  # sized by the burst it saw
        for container in pool_containers(docker_client, host):
            attrs = docker_client.containers.get(container.id).attrs
            assert attrs["HostConfig"]["Memory"] == LIMITS["memory_mb"] * 1024 * 1024
            assert attrs["HostConfig"]["NetworkMode"] == "none"
        idle = {c.id for c in pool_containers(docker_client, host)}

        second = send(client, host, pooled_tool('echo "{\\"warm\\": true}"'))

        assert second["result"] == {"warm": True}
        assert second["container_id"] in idle
        assert registry.hget(f"orch:exec:{second['execution_id']}", "pooled") == b"1"
        other = send(client, host, pooled_tool("echo b", resource_limits={"memory_mb": 64}))
        assert other["container_id"] not in idle  # other limits: another pool, cold first
    finally:
        stop_pool_worker(process, client, host, docker_client)
