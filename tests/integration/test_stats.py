"""Container stats end to end: real worker, real engine, figures checked against `docker stats`."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from orchestrator import ContainerStats, ExecutionHandle, OrchestratorClient
from orchestrator.errors import ContainerNotFound, InvalidRequest
from tests.integration.harness import MANAGED, TEST_IMAGE, gone, have, listed, require, tool

HTTPD = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8000 -h /www"
BUSY_LOOP = "while :; do :; done"
MIB = 1024 * 1024


def hold_memory(megabytes: int, seconds: int) -> str:
    """A shell keeping ``megabytes`` (10**6 bytes) in a variable for ``seconds``.

    The trailing ``echo`` keeps the shell alive: busybox sh execs a final plain command,
    which would drop the variable. Building the value takes busybox sh a buffer that
    doubles, so the cgroup's peak reaches about twice the value held.
    """
    return (
        f'x=$(head -c {megabytes * 1_000_000} /dev/zero | tr "\\0" a); '
        f"sleep {seconds}; echo ${{#x}}"
    )


def probe(session_id: str, script: str, **limits: Any) -> dict[str, Any]:
    return tool(
        session_id,
        script,
        tool_name="stats-probe",
        resource_limits={"timeout_seconds": 30, **limits},
    )


@pytest.fixture(autouse=True)
def nothing_left_behind(docker_client: docker.DockerClient, session_id: str) -> Iterator[None]:
    yield
    label = {"label": [MANAGED, f"orchestrator.session={session_id}"]}
    assert gone(lambda: listed(docker_client, label)) == []
    assert docker_client.networks.list(filters=label) == []
    assert docker_client.volumes.list(filters=label) == []


@pytest.fixture
def running(client: OrchestratorClient) -> Iterator[Callable[..., ExecutionHandle]]:
    """Start tools and wait until they run; cancel whatever is left at the end."""
    handles: list[ExecutionHandle] = []

    def start(request: dict[str, Any], timeout: float = 30) -> ExecutionHandle:
        handle = client.execute_tool(request)
        handles.append(handle)
        deadline = time.monotonic() + timeout
        while (state := handle.state) != "RUNNING":  # read once: it may change between reads
            assert state in ("PENDING", "STARTED", "PULLING"), state
            assert time.monotonic() < deadline, "the tool never reached RUNNING"
            time.sleep(0.1)
        return handle

    yield start
    for handle in handles:
        client.cancel_tool(handle.id)
    for handle in handles:
        handle.result(timeout=60)


def poll_stats(
    client: OrchestratorClient, ident: str, ok: Callable[[ContainerStats], bool], seconds: float
) -> ContainerStats:
    """Sample until ``ok`` holds (a tool needs a moment to allocate); the last sample."""
    deadline = time.monotonic() + seconds
    current = client.container_stats(ident)
    while not ok(current) and time.monotonic() < deadline:
        current = client.container_stats(ident)
    return current


def docker_cli_memory_mb(container_id: str) -> float:
    """Memory in use as `docker stats` prints it, in MiB."""
    line = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{json .}}", container_id],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    usage = json.loads(line)["MemUsage"].split("/")[0].strip()
    match = re.fullmatch(r"([0-9.]+)\s*([KMG]i?B|B)", usage)
    assert match, usage
    scale = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    return float(match[1]) * scale[match[2]] / MIB


def test_stats_of_a_running_relic_by_relic_id_name_and_container_id(
    client: OrchestratorClient, session_id: str
) -> None:
    try:
        relic = client.start_relic(
            {
                "relic_name": "web",
                "session_id": session_id,
                "image": TEST_IMAGE,
                "command": ["sh", "-c", HTTPD],
            },
            timeout=90,
        )
        by_relic = client.container_stats(relic.relic_id)
        assert by_relic.status == "running"
        assert by_relic.memory_limit_mb == pytest.approx(1024, rel=0.01)
        assert 0 < by_relic.memory_used_mb < 64
        assert by_relic.kind == "relic"
        assert by_relic.session_id == session_id
        assert by_relic.host == client.settings.host_name
        assert by_relic.running_seconds > 0
        assert relic.container_id is not None
        for ident in (relic.container_name, relic.container_id):
            again = client.container_stats(ident)
            assert (again.container_id, again.name) == (by_relic.container_id, by_relic.name)
    finally:
        client.cleanup_session(session_id)


def test_cpu_of_a_busy_tool_follows_its_cpu_limit(
    client: OrchestratorClient, session_id: str, running: Callable[..., ExecutionHandle]
) -> None:
    handle = running(probe(session_id, BUSY_LOOP, cpu_limit=0.5))
    sample = poll_stats(client, handle.id, lambda s: s.cpu_percent > 30, seconds=10)
    assert sample.status == "running"
    assert sample.kind == "tool"
    assert 30 <= sample.cpu_percent <= 70
    assert client.cancel_tool(handle.id)["cancelled"] is True
    assert handle.result(timeout=30).status == "cancelled"


def test_memory_of_a_running_tool_matches_docker_stats(
    client: OrchestratorClient, session_id: str, running: Callable[..., ExecutionHandle]
) -> None:
    handle = running(probe(session_id, hold_memory(40, 30), memory_mb=256))
    sample = poll_stats(client, handle.id, lambda s: s.memory_used_mb > 35, seconds=15)
    assert 35 <= sample.memory_used_mb <= 120
    assert sample.memory_limit_mb == pytest.approx(256, rel=0.01)
    require(have("docker"), "the docker command line")  # fails under CI, skips otherwise
    cli = docker_cli_memory_mb(sample.container_id)
    ours = client.container_stats(handle.id).memory_used_mb
    assert ours == pytest.approx(cli, rel=0.10)


def test_aggregate_stats_sum_per_session_and_count_runs(
    client: OrchestratorClient,
    session_id: str,
    running: Callable[..., ExecutionHandle],
    docker_client: docker.DockerClient,
) -> None:
    done = client.run_tool(probe(session_id, "echo '{}'"), timeout=60)
    assert done.status == "succeeded"
    handles = [running(probe(session_id, hold_memory(10, 30))) for _ in range(2)]
    poll_stats(client, handles[-1].id, lambda s: s.memory_used_mb > 9, seconds=15)
    # The finished run's container goes behind the runs in progress (2 s at most).
    assert gone(lambda: listed(docker_client, {"name": f"orch-tool-{done.execution_id}"})) == []

    overview = client.stats()

    ours = [c for c in overview.containers if c.session_id == session_id]
    assert sorted(c.name for c in ours) == sorted(f"orch-tool-{h.id}" for h in handles)
    assert all(c.status == "running" and c.kind == "tool" for c in ours)
    sums = overview.sessions[session_id]
    assert sums["containers"] == 2
    assert sums["running"] == 2
    assert sums["memory_used_mb"] == pytest.approx(sum(c.memory_used_mb for c in ours), abs=0.01)
    assert sums["memory_used_mb"] > 15
    assert overview.totals["containers"] >= 2
    assert overview.totals["memory_used_mb"] >= sums["memory_used_mb"]
    assert overview.totals["duration_mean_seconds"] > 0
    assert overview.totals["duration_p95_seconds"] >= overview.totals["duration_mean_seconds"] / 2
    assert overview.executions_by_status.get("succeeded", 0) >= 1
    assert overview.executions_by_tool.get("stats-probe", 0) >= 1
    assert client.settings.host_name in overview.hosts
    assert overview.errors == []


def test_finished_tool_reports_its_peak_memory(client: OrchestratorClient, session_id: str) -> None:
    result = client.run_tool(probe(session_id, hold_memory(30, 3)), timeout=60)
    assert result.status == "succeeded"
    assert result.stdout.strip() == "30000000"
    peak = result.stats.peak_memory_mb
    # 30 MB held is 28.6 MiB; building it briefly took about twice that (see hold_memory).
    assert peak is not None and 28 <= peak <= 80
    assert result.stats.samples >= 1


def test_finished_tool_and_unknown_ids_are_clear_not_found(
    client: OrchestratorClient, session_id: str
) -> None:
    done = client.run_tool(probe(session_id, "true"), timeout=60)
    with pytest.raises(ContainerNotFound, match="finished .*removed"):
        client.container_stats(done.execution_id)
    with pytest.raises(ContainerNotFound, match="no managed container 'no-such-thing'"):
        client.container_stats("no-such-thing")
    with pytest.raises(InvalidRequest, match="container:"):
        client.container_stats("../etc")
