"""Per-run latency and throughput: orchestrator vs raw docker-py, side by side in one run.

Latency: a trivial tool run through the orchestrator (client enqueue → result in the
client) and the same container through raw docker-py (create, start, wait, logs,
remove; same image, limits and network mode), interleaved, N times each. Throughput:
50 runs (by default) at several concurrencies for each, best of each reported.

Needs Redis and the Docker engine (``make setup``); starts its own worker.
Usage: ``python bench/run_overhead.py [--runs 30] [--throughput-runs 50]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import OrchestratorClient, Settings  # noqa: E402
from tests.integration.harness import TEST_IMAGE, WorkerProcess, settings_env  # noqa: E402

COMMAND = ["sh", "-c", "echo '{\"ok\": true}'"]
MEMORY_MB = 128
CPU = 1.0


def raw_run(engine: Any, network_mode: str = "none") -> float:
    """One run by raw docker-py; returns seconds."""
    started = time.perf_counter()
    container = engine.containers.create(
        TEST_IMAGE,
        COMMAND,
        mem_limit=f"{MEMORY_MB}m",
        memswap_limit=f"{MEMORY_MB}m",
        nano_cpus=int(CPU * 1e9),
        pids_limit=256,
        network_mode=network_mode,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
    )
    try:
        container.start()
        container.wait()
        container.logs(stdout=True, stderr=False)
        container.logs(stdout=False, stderr=True)
    finally:
        container.remove(force=True)
    return time.perf_counter() - started


def request(network_mode: str = "none", pooled: bool = False) -> dict[str, Any]:
    # The pool is configured for exactly these limits; other limits run cold.
    pids = {} if pooled else {"pids_limit": 255}
    return {
        "tool_name": "bench",
        "session_id": "bench",
        "image": TEST_IMAGE,
        "command": COMMAND,
        "network_mode": network_mode,
        "resource_limits": {"memory_mb": MEMORY_MB, "cpu_limit": CPU, **pids},
    }


def orchestrated_run(
    client: OrchestratorClient, network_mode: str = "none", pooled: bool = False
) -> float:
    """One run through the orchestrator (a cold container, or a warm-pool one)."""
    started = time.perf_counter()
    result = client.run_tool(request(network_mode, pooled), timeout=120)
    assert result.status == "succeeded", result
    return time.perf_counter() - started


def throughput(run: Any, total: int, concurrency: int) -> float:
    """Runs per second for ``total`` runs at ``concurrency``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda _: run(), range(total)))
    return total / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--throughput-runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8, 16])
    args = parser.parse_args()

    host = f"bench-{uuid.uuid4().hex[:6]}"
    pool = json.dumps([{"image": TEST_IMAGE, "size": 4, "memory_mb": MEMORY_MB, "cpu_limit": CPU}])
    worker = WorkerProcess(
        host,
        Path(tempfile.mkdtemp()),
        env={"ORCHESTRATOR_WORKER_CONCURRENCY": "32", "ORCHESTRATOR_POOL": pool},
    ).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    engine = docker.from_env(max_pool_size=64)
    try:
        for _ in range(3):  # warm both paths
            raw_run(engine)
            orchestrated_run(client)
        raw, orch = [], []
        for _ in range(args.runs):
            raw.append(raw_run(engine))
            orch.append(orchestrated_run(client))
        raw_median, orch_median = statistics.median(raw), statistics.median(orch)
        print(f"latency, {args.runs} interleaved runs each (network_mode=none)")
        print(f"  raw docker-py  median {raw_median * 1000:7.1f} ms")
        print(f"  orchestrator   median {orch_median * 1000:7.1f} ms")
        print(f"  ratio orchestrator/raw = {orch_median / raw_median:.3f}")

        raw, pooled = [], []
        for _ in range(args.runs):
            raw.append(raw_run(engine))
            pooled.append(orchestrated_run(client, pooled=True))
            time.sleep(0.3)  # let the pool refill, as it would between real calls
        raw_median, pool_median = statistics.median(raw), statistics.median(pooled)
        print(f"warm pool, {args.runs} interleaved runs each")
        print(f"  raw docker-py cold  median {raw_median * 1000:7.1f} ms")
        print(f"  orchestrator pooled median {pool_median * 1000:7.1f} ms")
        print(f"  ratio pooled/raw cold = {pool_median / raw_median:.3f} (target <= 0.35)")

        print(f"throughput, {args.throughput_runs} runs (runs/s by concurrency)")
        best_raw = best_orch = 0.0
        for concurrency in args.concurrency:
            r = throughput(lambda: raw_run(engine), args.throughput_runs, concurrency)
            o = throughput(lambda: orchestrated_run(client), args.throughput_runs, concurrency)
            best_raw, best_orch = max(best_raw, r), max(best_orch, o)
            print(f"  concurrency {concurrency:3d}: raw {r:6.2f}/s  orchestrator {o:6.2f}/s")
        print(
            f"  best: raw {best_raw:.2f}/s, orchestrator {best_orch:.2f}/s, "
            f"ratio orchestrator/raw = {best_orch / best_raw:.3f}"
        )
    finally:
        client.close()
        worker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
