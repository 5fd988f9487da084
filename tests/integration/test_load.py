"""Load: 300 runs on two workers (none lost, none run twice, nothing leaked), and 200 MB of
output that must not grow the worker's memory."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.models import ToolExecutionResult
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    REDIS_URL,
    WorkerProcess,
    force_remove_managed,
    gone,
    listed,
    managed_leftovers,
    tool,
)

pytestmark = pytest.mark.slow

RUNS = 300
EXECUTE = "orchestrator.tools.execute"


@pytest.fixture(scope="module")
def second_worker(
    worker: WorkerProcess,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> Iterator[WorkerProcess]:
    """Another host name on the same engine: a second worker consuming ``tools``."""
    name = f"it-load-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    process = WorkerProcess(name, tmp_path_factory.mktemp("logs-load"), env=worker_env).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, name)


@pytest.mark.timeout(900)
def test_300_runs_on_two_workers_none_lost_none_duplicated_nothing_leaked(
    client: OrchestratorClient,
    worker: WorkerProcess,
    second_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    shared_dir: Path,
) -> None:
    session_id = f"load-{uuid.uuid4().hex[:8]}"
    out = shared_dir / session_id
    out.mkdir()
    out.chmod(0o777)
    volumes = [{"source": str(out), "target": "/out"}]
    script = 'echo "$N" >> /out/lines; echo "{\\"n\\": $N}"'
    started = time.monotonic()
    # Each run goes to one of the two workers' own queues: a worker of another test that
    # consumes the shared queue with other settings cannot take any of them.
    queues = [f"host.{worker.host_name}", f"host.{second_worker.host_name}"]
    handles = [
        client.app.send_task(
            "orchestrator.tools.execute",
            args=[tool(session_id, script, parameters={"N": n}, volumes=volumes)],
            queue=queues[n % 2],
        )
        for n in range(RUNS)
    ]
    deadline = time.monotonic() + 780
    results = [
        ToolExecutionResult.model_validate(h.get(timeout=max(1.0, deadline - time.monotonic())))
        for h in handles
    ]
    elapsed = time.monotonic() - started

    assert len(results) == RUNS  # none lost
    failed = [(r.execution_id, r.status, r.error) for r in results if r.status != "succeeded"]
    assert failed == []
    assert [r.result for r in results] == [{"n": n} for n in range(RUNS)]
    assert len({r.execution_id for r in results}) == RUNS
    assert {r.execution_id for r in results} == {h.id for h in handles}
    assert {r.host for r in results} == {worker.host_name, second_worker.host_name}

    written = (out / "lines").read_text().splitlines()
    assert len(written) == RUNS  # none ran twice
    assert set(written) == {str(n) for n in range(RUNS)}

    session = {"label": f"orchestrator.session={session_id}"}
    assert gone(lambda: listed(docker_client, session)) == []  # nothing leaked
    inflight = {m.decode() for m in redis.Redis.from_url(REDIS_URL).smembers("orch:inflight")}
    assert inflight.isdisjoint(h.id for h in handles)
    assert elapsed < 780, f"{RUNS} runs took {elapsed:.0f} s"


# -- memory under a flood of output -------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM...) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 50 ms; ``peak_kib`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = status_kib(pid, "VmRSS")
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))

    def stop(self) -> int:
        self._done.set()
        self.join(5)
        return self.peak_kib


@pytest.fixture
def rss_worker(
    services: None,
    worker_env: dict[str, str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> Iterator[WorkerProcess]:
    name = f"it-rss-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    process = WorkerProcess(name, tmp_path, env=worker_env).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, name)


@pytest.mark.timeout(600)
def test_200_mb_of_output_raises_the_worker_peak_rss_by_under_64_mb(
    client: OrchestratorClient, rss_worker: WorkerProcess, docker_client: docker.DockerClient
) -> None:
    queue = f"host.{rss_worker.host_name}"
    for n in range(2):  # warm up: imports, engine connection, follower and sampler threads
        warm = client.app.send_task(EXECUTE, args=[tool("rss", f"echo {n}")], queue=queue)
        assert warm.get(timeout=120)["stdout"] == f"{n}\n"
    time.sleep(1)
    pid = rss_worker.pid
    hwm_before = status_kib(pid, "VmHWM")
    rss_before = status_kib(pid, "VmRSS")
    sampler = RssSampler(pid)
    sampler.start()
    flood = "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo done"
    sent = client.app.send_task(
        EXECUTE,
        args=[tool("rss", flood, resource_limits={"timeout_seconds": 400})],
        queue=queue,
    )
    try:
        result = sent.get(timeout=480)
    finally:
        peak_rss = sampler.stop()
    hwm_after = status_kib(pid, "VmHWM")
    growth_mb = (hwm_after - hwm_before) / 1024
    sampled_mb = (peak_rss - rss_before) / 1024
    report = (
        f"VmHWM {hwm_before / 1024:.1f} -> {hwm_after / 1024:.1f} MiB (+{growth_mb:.1f}); "
        f"sampled VmRSS {rss_before / 1024:.1f} -> peak {peak_rss / 1024:.1f} MiB "
        f"(+{sampled_mb:.1f})"
    )
    skipped = re.search(r"\[\.\.\. (\d+) bytes truncated \.\.\.\]", result["stdout"])
    report += f"; bytes skipped between head and tail: {skipped and skipped.group(1)}"
    print(report)

    assert result["status"] == "succeeded", result["error"]
    assert result["stdout_truncated"] is True
    cap = client.settings.log_cap_bytes
    stdout = result["stdout"]
    assert cap // 2 <= len(stdout) <= cap + 200, len(stdout)
    assert stdout.startswith("x" * 1000)
    assert stdout.endswith("x\ndone\n")
    assert "bytes truncated" in stdout
    assert growth_mb < 64, report
    assert sampled_mb < 64, report
    host = rss_worker.host_name
    assert gone(lambda: managed_leftovers(docker_client, host)["containers"]) == []
