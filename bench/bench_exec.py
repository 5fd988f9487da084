"""Exec of a trivial command in a running relic, end to end, against raw docker-py.

The orchestrator's side is ``client.exec_in_relic`` (enqueue, the worker's exec with its
live log and registry bookkeeping, the result back in the client); the raw side is
docker-py's ``container.exec_run`` of the same command in the same running container.
The two alternate N times; the script prints the p50 (and p90) of each and their ratio
(target: at most 1.25).

Needs Redis and the Docker engine (``scripts/setup.sh``); starts its own worker, uses the
registry database of ``ORCHESTRATOR_TEST_REDIS_URL`` and leaves nothing behind.
Usage: ``python bench/bench_exec.py [--runs 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import OrchestratorClient, Settings  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    settings_env,
)

COMMAND = ["echo", "hi"]
TARGET_RATIO = 1.25


def percentile(samples: list[float], fraction: float) -> float:
    """The sample below which ``fraction`` of the samples lie (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="calls of each kind")
    parser.add_argument("--warmup", type=int, default=10, help="calls of each kind not counted")
    args = parser.parse_args()

    host = f"bench-exec-{uuid.uuid4().hex[:6]}"
    session_id = f"bench-exec-{uuid.uuid4().hex[:6]}"
    engine = docker.from_env()
    worker = WorkerProcess(host, Path(tempfile.mkdtemp())).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    try:
        relic = client.start_relic(
            {
                "relic_name": "ws",
                "session_id": session_id,
                "image": TEST_IMAGE,
                "command": ["sleep", "3600"],
                "health_check_endpoint": None,
            },
            timeout=60,
        )
        container = engine.containers.get(relic.container_name)
        ours: list[float] = []
        raw: list[float] = []
        for index in range(args.warmup + args.runs):
            began = time.perf_counter()
            result = client.exec_in_relic(relic.relic_id, COMMAND, timeout=30)
            took = time.perf_counter() - began
            assert result.status == "succeeded" and result.stdout == "hi\n", result
            began = time.perf_counter()
            code, output = container.exec_run(COMMAND)
            took_raw = time.perf_counter() - began
            assert code == 0 and output == b"hi\n"
            if index >= args.warmup:
                ours.append(took)
                raw.append(took_raw)
        ours_p50, raw_p50 = statistics.median(ours), statistics.median(raw)
        ratio = ours_p50 / raw_p50
        print(f"exec in a relic, {args.runs} calls each, interleaved")
        print(
            f"  orchestrator exec_in_relic: p50 {ours_p50 * 1000:.1f} ms, "
            f"p90 {percentile(ours, 0.9) * 1000:.1f} ms"
        )
        print(
            f"  raw docker-py exec_run:     p50 {raw_p50 * 1000:.1f} ms, "
            f"p90 {percentile(raw, 0.9) * 1000:.1f} ms"
        )
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"  ratio (p50): {ratio:.2f}x ({verdict} the target of {TARGET_RATIO}x)")
        return 0
    finally:
        try:
            client.cleanup_session(session_id)
        finally:
            client.close()
            worker.stop()
            force_remove_managed(engine, host)
            engine.close()


if __name__ == "__main__":
    sys.exit(main())
