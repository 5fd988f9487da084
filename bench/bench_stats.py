"""Stats of 20 containers: ``orchestrator.stats.all`` vs raw docker-py, side by side in one run.

Starts its own worker, then 20 busybox containers (``sleep``) labelled as managed tool
containers of one bench session on the worker's host. Each round times, over the same 20:

* ``client.stats()``: the ``orchestrator.stats.all`` task, enqueue to merged result;
* raw docker-py, sequential: ``container.stats(stream=False)`` one after the other;
* raw docker-py, parallel: the same calls from 20 threads (what the worker does).

A stats request waits for the engine's once-a-second collector, so a sequential sweep costs
one to two seconds per container. Everything is removed at the end.

Needs Redis and the Docker engine (``make setup``).
Usage: ``python bench/bench_stats.py [--containers 20] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import OrchestratorClient, Settings  # noqa: E402
from orchestrator.core.specs import labels  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    settings_env,
)

SLEEP_SECONDS = 3600  # outlives every round (a sequential sweep alone takes 20-40 s)


def start_containers(engine: Any, count: int, session_id: str, host: str) -> list[Any]:
    """``count`` sleeping containers labelled as managed tool runs of ``session_id``."""
    started = []
    deadline = time.time() + SLEEP_SECONDS
    for index in range(count):
        execution = f"{session_id}-{index}"
        marks = labels("tool", session_id, deadline, host, execution=execution, tool="bench")
        started.append(
            engine.containers.run(
                TEST_IMAGE,
                ["sleep", str(SLEEP_SECONDS)],
                name=f"orch-tool-{execution}",
                labels=marks,
                mem_limit="64m",
                network_mode="none",
                detach=True,
            )
        )
    return started


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def orchestrated(client: OrchestratorClient, session_id: str, count: int) -> None:
    overview = client.stats(timeout=120)
    ours = [c for c in overview.containers if c.session_id == session_id]
    assert len(ours) == count and all(c.status == "running" for c in ours), ours
    assert all(c.memory_used_mb > 0 for c in ours), ours


def check_running(payloads: list[dict[str, Any]]) -> None:
    """A stopped container answers at once with an empty payload: that would not count."""
    assert all((p.get("memory_stats") or {}).get("usage") for p in payloads), "a container stopped"


def raw_sequential(containers: list[Any]) -> None:
    check_running([container.stats(stream=False) for container in containers])


def raw_parallel(containers: list[Any]) -> None:
    with ThreadPoolExecutor(max_workers=len(containers)) as pool:
        check_running(list(pool.map(lambda c: c.stats(stream=False), containers)))


def report(name: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    spread = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"  {name:32s} median {median:6.2f} s   (rounds: {spread})")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    host = f"bench-{uuid.uuid4().hex[:6]}"
    session_id = f"bench-stats-{uuid.uuid4().hex[:6]}"
    engine = docker.from_env(max_pool_size=args.containers + 8)
    worker = WorkerProcess(host, Path(tempfile.mkdtemp())).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    try:
        containers = start_containers(engine, args.containers, session_id, host)
        orchestrated(client, session_id, args.containers)  # warm up the worker's clients
        times: dict[str, list[float]] = {"orch": [], "seq": [], "par": []}
        count = args.containers
        for _ in range(args.rounds):
            times["orch"].append(timed(lambda: orchestrated(client, session_id, count))[0])
            times["seq"].append(timed(lambda: raw_sequential(containers))[0])
            times["par"].append(timed(lambda: raw_parallel(containers))[0])
        print(f"stats of {args.containers} running containers, {args.rounds} rounds")
        orch = report("orchestrator.stats.all", times["orch"])
        seq = report("raw docker-py, sequential", times["seq"])
        par = report("raw docker-py, parallel threads", times["par"])
        print(f"  ratio raw sequential / orchestrator = {seq / orch:.1f}x faster")
        print(f"  ratio orchestrator / raw parallel = {orch / par:.2f}")
    finally:
        client.close()
        worker.stop()
        force_remove_managed(engine, host)
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
