"""Where one tool run's time goes inside the worker: a cProfile of ``run_execution``.

Runs the library directly (no Celery) against the local engine and Redis, warms up,
then profiles a few cold runs and, if ``--pool`` is given, a few warm-pool runs, and
prints the functions with the most cumulative time. This is how the inspects after
start and after a clean exit were found (the engine's ``start`` dominates the rest).

Usage: ``python bench/profile_run.py [--runs 5] [--pool] [--top 25]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.engine.docker_engine import DockerEngine  # noqa: E402
from orchestrator.models import ToolExecutionRequest  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.worker import execution  # noqa: E402
from orchestrator.worker.runtime import Runtime  # noqa: E402
from tests.integration.harness import REDIS_URL, TEST_IMAGE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pool", action="store_true", help="profile warm-pool runs")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    limits = {"memory_mb": 128, "cpu_limit": 1.0}
    env = {"ORCHESTRATOR_POOL_MEMORY_MB": "0"}  # no pool learnt from these runs' demand
    if args.pool:
        env["ORCHESTRATOR_POOL"] = json.dumps([{"image": TEST_IMAGE, "size": 3, **limits}])
    settings = Settings.from_env(env, host_name=f"profile-{uuid.uuid4().hex[:4]}")
    engine = DockerEngine.from_env(timeout_seconds=settings.docker_timeout_seconds)
    runtime = Runtime(settings, redis.Redis.from_url(REDIS_URL), engine=engine)
    request = ToolExecutionRequest.model_validate(
        {
            "tool_name": "p",
            "session_id": "p",
            "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo hi"],
            "resource_limits": limits,
        }
    )
    try:
        runtime.pool.refill()
        execution.run_execution(runtime, request, str(uuid.uuid4()))  # warm up
        profiler = cProfile.Profile()
        started = time.perf_counter()
        for _ in range(args.runs):
            runtime.pool.refill()
            profiler.enable()
            execution.run_execution(runtime, request, str(uuid.uuid4()))
            profiler.disable()
        print(
            f"{args.runs} {'pooled' if args.pool else 'cold'} runs, "
            f"{(time.perf_counter() - started) / args.runs * 1000:.0f} ms each (wall)"
        )
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
    finally:
        time.sleep(1)  # let the background refill finish: drain removes only what is pooled
        runtime.pool.drain()  # waits for the background discards too
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
