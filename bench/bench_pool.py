"""The warm pool against raw docker-py ``exec_run``, side by side in one run.

- ``latency``: a pooled tool call through the client (enqueue → result in the client)
  and raw ``exec_run`` of the same command in a running container of the same image
  and limits, interleaved, N times each, paced by ``--gap`` seconds of think time (the
  pool refills in it, as between an agent's calls): p50 and p99 of each, their ratio
  and the pool hit rate.
- ``tail``: many paced pooled calls while the pool refills behind them, at each think time
  of ``--tail-gaps``: p50, p99, p99/p50, p99 against cold raw docker-py runs (create,
  start, wait, logs, remove), and the refill load: how much of the time between calls the
  engine spends replacing the used container (create and start as the pool makes it,
  plus remove, timed in the same run). Every call uses up a container; near 100% the
  refill meets the next call.
- ``burst``: 20 concurrent calls with a pool of 5 against 20 concurrent raw
  ``exec_run`` calls: wall time of each, ratio, and how many failed or timed out.
- ``trace``: how long making a pool container takes on this engine right now, then the
  replay of the agent-like traces of ``bench/traces/`` by :mod:`bench.pool_trace` with it:
  the adaptive pools' hit rate and idle container-seconds against the cheapest fixed pool
  with the same hit rate.

Needs Redis and the Docker engine (``scripts/setup.sh``); starts its own worker.
Usage: ``python bench/bench_pool.py [latency] [tail] [burst] [trace] [--runs 40] [--gap 0.3]
[--tail-gaps 0.5,0.3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import pool_trace  # noqa: E402
from bench.run_overhead import raw_run  # noqa: E402
from orchestrator import OrchestratorClient, Settings  # noqa: E402
from orchestrator.core.types import ContainerSpec  # noqa: E402
from orchestrator.engine.docker_engine import DockerEngine  # noqa: E402
from orchestrator.state import keys  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    REDIS_URL,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    settings_env,
)

COMMAND = ["sh", "-c", "echo '{\"ok\": true}'"]
MEMORY_MB = 128
CPU = 1.0
PHASES = ("latency", "tail", "burst", "trace")


def pool_env(size: int, adaptive: bool) -> dict[str, str]:
    """A worker's environment with a static pool of ``size`` for the bench's limits, and
    pools sized from demand on top of it when ``adaptive``."""
    spec = [{"image": TEST_IMAGE, "size": size, "memory_mb": MEMORY_MB, "cpu_limit": CPU}]
    return {
        "ORCHESTRATOR_WORKER_CONCURRENCY": "32",
        "ORCHESTRATOR_POOL": json.dumps(spec),
        "ORCHESTRATOR_POOL_MEMORY_MB": "4096" if adaptive else "0",
        "ORCHESTRATOR_POOL_MAX_SIZE": "32",
    }


def tool_request() -> dict[str, Any]:
    """The pooled tool call: the pool's image and limits, no network."""
    return {
        "tool_name": "bench",
        "session_id": "bench-pool",
        "image": TEST_IMAGE,
        "command": COMMAND,
        "resource_limits": {"memory_mb": MEMORY_MB, "cpu_limit": CPU},
    }


class Bench:
    """A worker on its own host name, a client of it and a raw running container."""

    def __init__(
        self, host: str, client: OrchestratorClient, engine: Any, target: Any | None
    ) -> None:
        self.host = host
        self.client = client
        self.engine = engine
        self.target = target
        self.registry = redis.Redis.from_url(REDIS_URL)

    def pooled(self) -> tuple[float, bool]:
        """One tool call through the client; returns (seconds, whether it took an idle
        pool container)."""
        elapsed, where = self.call()
        return elapsed, where == "idle"

    def call(self) -> tuple[float, str]:
        """One tool call through the client; returns (seconds, where it ran: ``idle`` (an
        idle pool container), ``made`` (a pool container made for it) or ``cold``)."""
        started = time.perf_counter()
        result = self.client.run_tool(tool_request(), timeout=120)
        elapsed = time.perf_counter() - started
        assert result.status == "succeeded", result
        assert result.result == {"ok": True}, result
        pooled, made = self.registry.hmget(
            keys.execution(result.execution_id), ["pooled", "made_now"]
        )
        return elapsed, "made" if made else "idle" if pooled else "cold"

    def raw_exec(self) -> float:
        """Raw docker-py ``exec_run`` of the same command in a running container."""
        assert self.target is not None
        started = time.perf_counter()
        code, output = self.target.exec_run(COMMAND)
        elapsed = time.perf_counter() - started
        assert code == 0 and output == b'{"ok": true}\n', (code, output)
        return elapsed

    def pool_size(self) -> int:
        """Idle pool containers of this host right now."""
        found = self.registry.keys(f"{keys.PREFIX}pool:{self.host}:*")
        return sum(int(self.registry.scard(k)) for k in found)

    def wait_settled(self, timeout: float = 30) -> None:
        """Wait until the host holds no used container (each removed behind its run): only
        the idle pool."""
        deadline = time.monotonic() + timeout
        host = f"orchestrator.host={self.host}"
        while time.monotonic() < deadline:
            found = len(self.engine.api.containers(all=True, filters={"label": host}))
            if found <= self.pool_size():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.host} still removes used containers after {timeout} s")

    def wait_pool(self, size: int, timeout: float = 60, steady: float = 0.0) -> None:
        """Wait until the pool holds ``size`` idle containers (and, with ``steady``, has not
        changed for that many seconds)."""
        deadline = time.monotonic() + timeout
        while self.pool_size() < size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool of {self.host} never reached {size}")
            time.sleep(0.1)
        last, since = self.pool_size(), time.monotonic()
        while time.monotonic() - since < steady and time.monotonic() < deadline:
            time.sleep(0.2)
            if (now := self.pool_size()) != last:
                last, since = now, time.monotonic()


@contextmanager
def bench_setup(pool_size: int, log_dir: Path, adaptive: bool) -> Iterator[Bench]:
    """Start a worker with a pool of ``pool_size``, a client and a raw target container."""
    host = f"bench-pool-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(host, log_dir, env=pool_env(pool_size, adaptive)).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    engine = docker.from_env(max_pool_size=64)
    target = engine.containers.run(
        TEST_IMAGE,
        ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
        detach=True,
        mem_limit=f"{MEMORY_MB}m",
        memswap_limit=f"{MEMORY_MB}m",
        nano_cpus=int(CPU * 1e9),
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        labels={"orchestrator.bench": host},
    )
    bench = Bench(host, client, engine, target)
    try:
        bench.wait_pool(pool_size)
        yield bench
    finally:
        target.remove(force=True)
        client.close()
        worker.stop()
        force_remove_managed(engine, host)


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def describe(name: str, values: list[float]) -> str:
    """``name p50 ... p99 ...`` in milliseconds."""
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    return f"  {name:<26} p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def latency(bench: Bench, runs: int, gap: float) -> None:
    """Interleaved pooled calls and raw exec_runs, paced by ``gap`` seconds."""
    for _ in range(3):  # warm both paths (connections, imports, the worker's first task)
        bench.raw_exec()
        bench.pooled()
        time.sleep(gap)
    raw, pooled, hits = [], [], 0
    for _ in range(runs):
        raw.append(bench.raw_exec())
        elapsed, hit = bench.pooled()
        pooled.append(elapsed)
        hits += hit
        time.sleep(gap)
    ratio = statistics.median(pooled) / statistics.median(raw)
    print(f"latency, {runs} interleaved calls each, {gap} s apart")
    print(describe("raw docker-py exec_run", raw))
    print(describe("orchestrator pooled call", pooled))
    print(f"  pool hits {hits}/{runs}")
    print(f"  ratio pooled/raw exec_run p50 = {ratio:.3f} (target <= 1.25)")


def tail(bench: Bench, runs: int, gaps: list[float], cold_runs: int) -> None:
    """Many paced pooled calls while the pool refills, at each think time of ``gaps``;
    compared with cold raw runs, with the refill's share of the engine's time."""
    cold = [raw_run(bench.engine) for _ in range(cold_runs)]
    makes, removes = refill_samples(bench.engine)
    make, remove = statistics.median(makes), statistics.median(removes)
    cold_p50 = statistics.median(cold)
    for gap in gaps:
        pooled, hits = [], 0
        for _ in range(runs):
            elapsed, hit = bench.pooled()
            pooled.append(elapsed)
            hits += hit
            time.sleep(gap)
        p50, p99 = statistics.median(pooled), percentile(pooled, 0.99)
        load = (make + remove) / (p50 + gap)
        print(f"tail, {runs} pooled calls {gap} s apart while the pool refills")
        print(describe("orchestrator pooled call", pooled))
        print(describe("raw docker-py cold run", cold))
        print(
            f"  refill per call: create+start {make * 1000:.0f} ms + remove {remove * 1000:.0f} ms"
            f" = {load:.0%} of the time between calls"
        )
        print(f"  pool hits {hits}/{runs}")
        print(f"  pooled p99/p50 = {p99 / p50:.3f} (target <= 1.5)")
        print(f"  pooled p99 / cold raw p50 = {p99 / cold_p50:.3f} (target <= 0.3)")


def concurrently(call: Callable[[], Any], count: int) -> tuple[float, list[Any]]:
    """Run ``call`` ``count`` times at once; returns (wall seconds, outcomes or errors)."""

    def guarded(_: int) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - counted and printed by the caller
            return exc

    with ThreadPoolExecutor(max_workers=count) as threads:
        started = time.perf_counter()
        outcomes = list(threads.map(guarded, range(count)))
        return time.perf_counter() - started, outcomes


def burst(bench: Bench, count: int, rounds: int, pool_size: int, adaptive: bool) -> None:
    """``count`` concurrent pooled calls against ``count`` concurrent raw exec_runs (with
    ``adaptive``, the pool may have grown after the first burst)."""
    raw_times, orch_times, failures, hits, made_now = [], [], 0, 0, 0
    for _ in range(rounds):
        # Each burst, raw or not, meets an idle host: the pool refilled and the last
        # burst's containers removed.
        bench.wait_pool(pool_size, steady=3.0 if adaptive else 0.0)
        bench.wait_settled()
        seconds, _ = concurrently(bench.raw_exec, count)
        raw_times.append(seconds)
        seconds, outcomes = concurrently(bench.call, count)
        orch_times.append(seconds)
        failures += sum(isinstance(o, Exception) for o in outcomes)
        ran_in = [o[1] for o in outcomes if not isinstance(o, Exception)]
        hits += ran_in.count("idle")
        made_now += ran_in.count("made")
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                print(f"  failed: {outcome!r}")
    raw_p50, orch_p50 = statistics.median(raw_times), statistics.median(orch_times)
    sizing = "static, sized from demand above that" if adaptive else "static"
    print(f"burst, {count} concurrent calls, pool of {pool_size} ({sizing}), {rounds} rounds")
    print(f"  raw docker-py exec_run x{count}   median wall {raw_p50 * 1000:7.1f} ms")
    print(f"  orchestrator calls x{count}       median wall {orch_p50 * 1000:7.1f} ms")
    total = count * rounds
    cold = total - failures - hits - made_now
    print(
        f"  from idle pool containers {hits}/{total}, in containers made for them {made_now}"
        f" (misses on a busy worker), cold {cold}; failed or timed out {failures}"
    )
    print(f"  ratio orchestrator/raw = {orch_p50 / raw_p50:.3f} (target <= 1.3)")


def refill_samples(engine: Any, samples: int = 5) -> tuple[list[float], list[float]]:
    """Times to make one idle container as the pool makes it (its spec, no network,
    through the orchestrator's engine calls: create, then start), and to remove it while it
    runs: ``samples`` of each."""
    made_by = DockerEngine(engine)
    makes, removes = [], []
    for _ in range(samples):
        spec = ContainerSpec(
            name=f"bench-refill-{uuid.uuid4().hex[:10]}",
            image=TEST_IMAGE,
            labels={"orchestrator.bench": "refill"},
            command=("sh", "-c", "sleep 3600"),
            memory_mb=MEMORY_MB,
            cpu_limit=CPU,
        )
        started = time.perf_counter()
        container_id = made_by.create_container_id(spec)
        made_by.start_container(container_id)
        made = time.perf_counter()
        made_by.remove_container(container_id)
        makes.append(made - started)
        removes.append(time.perf_counter() - made)
    return makes, removes


def refill_seconds(engine: Any, samples: int = 5) -> float:
    """Median time to make one idle container as the pool makes it (create and start)."""
    return statistics.median(refill_samples(engine, samples)[0])


def trace(bench: Bench) -> None:
    """The trace replays, with this engine's refill time."""
    seconds = refill_seconds(bench.engine)
    for path in sorted(pool_trace.TRACE.parent.glob("*.csv")):
        pool_trace.report(path, seconds)


def real_trace(seconds: float, log_dir: Path) -> None:
    """The first ``seconds`` of the agent trace, in real time, through a worker whose pools
    are sized from demand alone (no ORCHESTRATOR_POOL): hit rate and idle container-seconds
    as measured, next to the simulation of the same calls."""
    calls = [(t, tool) for t, tool in pool_trace.load_trace(pool_trace.TRACE) if t < seconds]
    env = {"ORCHESTRATOR_WORKER_CONCURRENCY": "32", "ORCHESTRATOR_POOL_MEMORY_MB": "4096"}
    host = f"bench-trace-{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(host, log_dir, env=env).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host)))
    engine = docker.from_env(max_pool_size=64)
    bench = Bench(host, client, engine, None)
    idle_seconds, hits, stop = 0.0, 0, False

    def watch() -> None:
        nonlocal idle_seconds
        while not stop:
            idle_seconds += bench.pool_size() * 0.2
            time.sleep(0.2)

    def call(tool: str) -> bool:
        request = tool_request()
        request["resource_limits"]["memory_mb"] = pool_trace.TOOL_MEMORY_MB[tool]
        result = client.run_tool(request, timeout=120)
        assert result.status == "succeeded", result
        fields = keys.execution(result.execution_id)
        pooled, made = bench.registry.hmget(fields, ["pooled", "made_now"])
        return bool(pooled) and not made  # an idle container, not one made for it

    try:
        with ThreadPoolExecutor(max_workers=16) as threads:
            watcher = threads.submit(watch)
            begin, futures = time.monotonic(), []
            for at, tool in calls:
                time.sleep(max(0.0, begin + at - time.monotonic()))
                futures.append(threads.submit(call, tool))
            hits = sum(f.result() for f in futures)
            time.sleep(max(0.0, begin + calls[-1][0] + pool_trace.TAIL_SECONDS - time.monotonic()))
            stop = True
            watcher.result()
    finally:
        client.close()
        worker.stop()
        force_remove_managed(engine, host)
    made = refill_seconds(engine)
    simulated = pool_trace.replay(calls, pool_trace.adaptive_sizer(made), made)
    name, end = pool_trace.TRACE.name, calls[-1][0] + pool_trace.TAIL_SECONDS
    print(f"real replay of the first {seconds:.0f} s of {name}: {len(calls)} calls, to {end:.0f} s")
    rate = hits / len(calls)
    print(f"  measured   hit rate {rate:6.1%}   idle container-seconds {idle_seconds:7.0f}")
    print(
        f"  simulated  hit rate {simulated.hit_rate:6.1%}   idle container-seconds "
        f"{simulated.idle_seconds:7.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "phases",
        nargs="*",
        default=["latency", "burst", "trace"],
        help=f"what to measure, among {', '.join(PHASES)}",
    )
    parser.add_argument("--runs", type=int, default=40, help="latency: calls of each kind")
    parser.add_argument("--gap", type=float, default=0.3, help="think time between calls (s)")
    parser.add_argument("--tail-runs", type=int, default=500)
    parser.add_argument(
        "--tail-gaps",
        type=lambda text: [float(g) for g in text.split(",")],
        default=[0.5, 0.3],
        help="tail: think times between calls (s), one run of --tail-runs each",
    )
    parser.add_argument("--cold-runs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=20, help="calls in one burst")
    parser.add_argument("--burst-rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=5, help="static pool size")
    parser.add_argument(
        "--adaptive", action="store_true", help="pools sized from demand above --pool"
    )
    parser.add_argument(
        "--real-trace-seconds",
        type=float,
        default=0,
        help="instead: replay the trace's first seconds in real time through a worker",
    )
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    if args.real_trace_seconds:
        real_trace(args.real_trace_seconds, log_dir)
        return 0
    with bench_setup(args.pool, log_dir, args.adaptive) as bench:
        if "latency" in args.phases:
            latency(bench, args.runs, args.gap)
        if "tail" in args.phases:
            tail(bench, args.tail_runs, args.tail_gaps, args.cold_runs)
        if "burst" in args.phases:
            burst(bench, args.burst, args.burst_rounds, args.pool, args.adaptive)
        if "trace" in args.phases:
            trace(bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
