"""Replay of a tool-call trace against warm pools, adaptive or fixed, in simulated time.

The adaptive pools are sized by the worker's own policy code
(:mod:`orchestrator.core.pool_policy`), on the same schedule as the worker: a sizing
round after each call and every second. Containers are made one at a time (the worker's
default refill concurrency), each taking ``refill_seconds`` (measure it on the engine:
``bench_pool.py trace`` does); a call finding an idle container is a hit and uses it up.
Idle container-seconds add up the time containers sit ready and unused.

The fixed pool to compare with is the cheapest static configuration with at least the
adaptive pools' hit rate, found with hindsight: one size per tool, grown greedily where
the misses are.

Usage: ``python bench/pool_trace.py [--trace bench/traces/agent.csv] [--refill-seconds 0.5]``.
"""

from __future__ import annotations

import argparse
import csv
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.pool_policy import PolicyConfig, PoolDemand, allocate, wanted_size

TRACE = Path(__file__).with_name("traces") / "agent.csv"
#: The memory limit of each tool of the trace (each is its own pool).
TOOL_MEMORY_MB = {"grep": 128, "read": 64, "run_tests": 512}
BUDGET_MB = 4096
TICK_SECONDS = 1.0
#: Simulated time after the last call (the host idles on).
TAIL_SECONDS = 60.0

# sizer(now, arrivals per tool) -> target size per tool
Sizer = Callable[[float, Mapping[str, list[float]]], dict[str, int]]


def load_trace(path: Path) -> list[tuple[float, str]]:
    """(seconds, tool) rows of a trace file, in time order."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    rows = [(float(r["seconds"]), r["tool"]) for r in csv.DictReader(lines)]
    return sorted(rows)


@dataclass
class Outcome:
    """What a replay measured."""

    hits: int = 0
    calls: int = 0
    idle_seconds: float = 0.0
    misses: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.calls if self.calls else 0.0


def adaptive_sizer(refill_seconds: float, config: PolicyConfig | None = None) -> Sizer:
    """The worker's policy: each pool from its demand, all within the budget."""
    policy = config or PolicyConfig()

    def size(now: float, arrivals: Mapping[str, list[float]]) -> dict[str, int]:
        demands = []
        for tool, times in arrivals.items():
            recent = [t for t in times if t > now - policy.horizon_seconds]
            wanted = wanted_size(recent, now, refill_seconds, policy)
            last = times[-1] if times else 0.0
            demands.append(PoolDemand(tool, TOOL_MEMORY_MB[tool], wanted, 0, last))
        return allocate(demands, BUDGET_MB)

    return size


def fixed_sizer(sizes: Mapping[str, int]) -> Sizer:
    """A static pool of ``sizes[tool]`` per tool."""
    return lambda now, arrivals: dict(sizes)


def replay(trace: list[tuple[float, str]], sizer: Sizer, refill_seconds: float) -> Outcome:
    """Replay ``trace`` against pools sized by ``sizer``; see the module's docstring."""
    tools = sorted({tool for _, tool in trace} | set(TOOL_MEMORY_MB))
    idle = dict.fromkeys(tools, 0)
    pending = dict.fromkeys(tools, 0)
    ready: list[tuple[float, str]] = []  # (when, tool) of containers being made
    arrivals: dict[str, list[float]] = {tool: [] for tool in tools}
    outcome = Outcome(misses=dict.fromkeys(tools, 0))
    creator_free = 0.0
    end = trace[-1][0] + TAIL_SECONDS
    ticks = [float(i) * TICK_SECONDS for i in range(int(end / TICK_SECONDS) + 1)]
    events = sorted([(t, tool) for t, tool in trace] + [(t, "") for t in ticks])
    clock = 0.0

    def advance(to: float) -> None:
        nonlocal clock
        while ready and ready[0][0] <= to:
            when, tool = heapq.heappop(ready)
            outcome.idle_seconds += sum(idle.values()) * (when - clock)
            clock = when
            pending[tool] -= 1
            idle[tool] += 1
        outcome.idle_seconds += sum(idle.values()) * (to - clock)
        clock = to

    def size(now: float) -> None:
        nonlocal creator_free
        targets = sizer(now, arrivals)
        for tool in tools:
            target = targets.get(tool, 0)
            idle[tool] = min(idle[tool], target)  # shrink: removed at once
            for _ in range(target - idle[tool] - pending[tool]):
                creator_free = max(creator_free, now) + refill_seconds
                heapq.heappush(ready, (creator_free, tool))
                pending[tool] += 1

    size(0.0)
    for now, tool in events:
        advance(now)
        if tool:
            arrivals[tool].append(now)
            outcome.calls += 1
            if idle[tool] > 0:
                idle[tool] -= 1
                outcome.hits += 1
            else:
                outcome.misses[tool] += 1
        size(now)
    advance(end)
    return outcome


def cheapest_fixed(
    trace: list[tuple[float, str]], hit_rate: float, refill_seconds: float
) -> tuple[dict[str, int], Outcome]:
    """The smallest per-tool static sizes whose hit rate reaches ``hit_rate``."""
    sizes = dict.fromkeys(sorted({tool for _, tool in trace}), 0)
    while True:
        outcome = replay(trace, fixed_sizer(sizes), refill_seconds)
        if outcome.hit_rate >= hit_rate or min(sizes.values()) >= 64:
            return sizes, outcome
        worst = max(outcome.misses, key=lambda tool: outcome.misses[tool])
        sizes[worst] += 1


def report(trace_path: Path, refill_seconds: float) -> None:
    """Print the adaptive pools' hit rate and idle time against the cheapest fixed pool."""
    trace = load_trace(trace_path)
    adaptive = replay(trace, adaptive_sizer(refill_seconds), refill_seconds)
    sizes, fixed = cheapest_fixed(trace, adaptive.hit_rate, refill_seconds)
    span = trace[-1][0] - trace[0][0]
    print(f"trace {trace_path.name}: {len(trace)} calls over {span:.0f} s")
    print(f"  (simulated; a pool container takes {refill_seconds:.2f} s to make)")
    print(
        f"  adaptive pools   hit rate {adaptive.hit_rate:6.1%}   idle container-seconds "
        f"{adaptive.idle_seconds:8.0f}"
    )
    print(
        f"  fixed pools {sizes}   hit rate {fixed.hit_rate:6.1%}   idle container-seconds "
        f"{fixed.idle_seconds:8.0f}"
    )
    print(f"  hit rate {adaptive.hit_rate:.3f} (target >= 0.95)")
    ratio = adaptive.idle_seconds / fixed.idle_seconds if fixed.idle_seconds else float("inf")
    print(f"  idle container-seconds adaptive/fixed = {ratio:.3f} (target <= 0.5)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--refill-seconds", type=float, default=0.5)
    args = parser.parse_args()
    report(args.trace, args.refill_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
