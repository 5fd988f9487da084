"""Throughput with one Docker host and with two, side by side in one run.

Host B is a second engine in a network namespace with its own worker
(``scripts/hostb.sh``). The same batch of trivial tool runs goes first to host A's
worker alone, then to both; raw docker-py from a thread pool on engine A is the anchor.

Needs Redis and the Docker engine (``make setup``), root (network namespaces).
Usage: ``python bench/bench_two_hosts.py [--runs 100] [--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_overhead import orchestrated_run, raw_run  # noqa: E402
from orchestrator import OrchestratorClient, Settings  # noqa: E402
from tests.integration.harness import REDIS_URL, WorkerProcess, settings_env  # noqa: E402

HOSTB_SOCKET = "unix:///var/tmp/orchestrator/hostb/docker.sock"


def rate(run: object, total: int, concurrency: int) -> float:
    """Runs per second for ``total`` calls of ``run`` at ``concurrency``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda _: run(), range(total)))  # type: ignore[operator]
    return total / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    hostb = ["bash", str(ROOT / "scripts" / "hostb.sh")]
    subprocess.run([*hostb, "up"], check=True, capture_output=True)
    logs = Path(tempfile.mkdtemp())
    a_name, b_name = f"bench-a-{uuid.uuid4().hex[:4]}", f"bench-b-{uuid.uuid4().hex[:4]}"
    url_b = REDIS_URL.replace("127.0.0.1", "10.254.0.1")
    worker_a = WorkerProcess(a_name, logs).start()
    worker_b = None
    client = OrchestratorClient(Settings.from_env(settings_env(a_name)))
    engine = docker.from_env(max_pool_size=64)
    try:
        raw = rate(lambda: raw_run(engine), args.runs, args.concurrency)
        one = rate(lambda: orchestrated_run(client), args.runs, args.concurrency)
        worker_b = WorkerProcess(
            b_name,
            logs,
            env={"ORCHESTRATOR_BROKER_URL": url_b, "ORCHESTRATOR_RESULT_BACKEND": url_b},
            netns="hostb",
            docker_host=HOSTB_SOCKET,
        ).start()
        two = rate(lambda: orchestrated_run(client), args.runs, args.concurrency)
        print(f"{args.runs} trivial runs at concurrency {args.concurrency}:")
        print(f"  raw docker-py, engine A        {raw:6.2f} runs/s")
        print(f"  orchestrator, one host (A)     {one:6.2f} runs/s  ({one / raw:.2f}x raw)")
        print(
            f"  orchestrator, two hosts (A, B) {two:6.2f} runs/s  ({two / raw:.2f}x raw, "
            f"{two / one:.2f}x one host)"
        )
    finally:
        client.close()
        worker_a.stop()
        if worker_b is not None:
            worker_b.stop()
        subprocess.run([*hostb, "down"], capture_output=True, env={**os.environ})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
