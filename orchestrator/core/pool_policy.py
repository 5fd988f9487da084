"""How many idle containers each warm pool should hold: a pure policy, from observed demand.

A pool is one image and one set of limits on one host. Its demand is the list of times
at which runs that could use it arrived (hits and misses alike). From those times:

- **size**: the fewest idle containers that would have served
  :attr:`PolicyConfig.served_fraction` of the remembered demand (the caller keeps
  ``horizon_seconds`` of it). An arrival is served when it is among the first ``size``
  arrivals of the window as long as a refill takes (at least
  :attr:`PolicyConfig.burst_window_seconds`) that ends with it. A pool that size serves
  the bursts it has seen from idle containers, but for their rarest peaks (a burst seen
  once in a long demand does not hold its size for half an hour), and a steady stream of
  calls gets as many containers as arrive while one is being made;
- **keep-warm period**: how long a pool outlives its last arrival. It follows the idle
  gaps seen between bursts (``keep_warm_factor`` times their 90th percentile, within
  ``keep_warm_min_seconds`` .. ``keep_warm_max_seconds``): an agent that thinks 10 s
  between calls keeps its pool, one that stopped lets it shrink to nothing;
- **budget**: :func:`allocate` fits the sizes of all pools of a host into a memory budget
  (the sum of the pools' memory limits), after the static minimums, which always stand.

Everything here is a function of its arguments (times are plain floats), so it is tested
with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PolicyConfig",
    "PoolDemand",
    "allocate",
    "burst_size",
    "idle_gaps",
    "keep_warm_seconds",
    "served_size",
    "wanted_size",
]


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's constants (none of them is an operator setting but ``max_size``)."""

    #: arrivals closer together than this (or than a refill takes) count as one burst
    burst_window_seconds: float = 1.0
    #: the share of the remembered arrivals a pool's size would have served from idle
    #: containers (1.0: the largest burst seen)
    served_fraction: float = 0.95
    #: the keep-warm period is this many times the 90th percentile of the idle gaps...
    keep_warm_factor: float = 2.0
    #: ...within these bounds
    keep_warm_min_seconds: float = 15.0
    keep_warm_max_seconds: float = 600.0
    #: and this long while fewer than ``min_gaps`` idle gaps were seen
    keep_warm_default_seconds: float = 60.0
    min_gaps: int = 3
    #: how far back demand is remembered
    horizon_seconds: float = 1800.0
    #: the largest size the policy gives one pool
    max_size: int = 16


def _window_ranks(arrivals: Sequence[float], window: float) -> list[int]:
    """For each arrival, how many arrivals (itself included) fall within the ``window``
    seconds that end with it."""
    ranks, first = [], 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] > window:
            first += 1
        ranks.append(last - first + 1)
    return ranks


def burst_size(arrivals: Sequence[float], window: float) -> int:
    """The most arrivals within any ``window`` seconds.

    Args:
        arrivals: arrival times, in ascending order.
        window: the window's length in seconds.
    """
    return max(_window_ranks(arrivals, window), default=0)


def served_size(arrivals: Sequence[float], window: float, fraction: float) -> int:
    """The fewest idle containers that would have served ``fraction`` of ``arrivals``.

    An arrival is served when at most that many arrivals (itself included) fall within
    the ``window`` seconds that end with it. ``fraction`` 1.0 gives :func:`burst_size`; a
    demand of fewer than ``1 / (1 - fraction)`` arrivals too.

    Args:
        arrivals: arrival times, in ascending order.
        window: the window's length in seconds.
        fraction: the share of the arrivals to serve, in (0, 1].
    """
    ranks = sorted(_window_ranks(arrivals, window))
    if not ranks:
        return 0
    return ranks[max(1, math.ceil(fraction * len(ranks) - 1e-9)) - 1]


def idle_gaps(arrivals: Sequence[float], window: float) -> list[float]:
    """The gaps between consecutive arrivals longer than ``window`` (between bursts)."""
    return [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b - a > window]


def keep_warm_seconds(arrivals: Sequence[float], config: PolicyConfig) -> float:
    """How long a pool is kept after its last arrival, from the idle gaps it saw."""
    gaps = sorted(idle_gaps(arrivals, config.burst_window_seconds))
    if len(gaps) < config.min_gaps:
        return config.keep_warm_default_seconds
    p90 = gaps[min(len(gaps) - 1, math.ceil(0.9 * len(gaps)) - 1)]
    wanted = config.keep_warm_factor * p90
    return min(config.keep_warm_max_seconds, max(config.keep_warm_min_seconds, wanted))


def wanted_size(
    arrivals: Sequence[float], now: float, refill_seconds: float, config: PolicyConfig
) -> int:
    """The idle containers one pool should hold at ``now``, from its demand alone.

    Args:
        arrivals: its arrival times within the horizon, ascending.
        now: the current time, on the same clock.
        refill_seconds: how long making one container takes here lately.
        config: the policy's constants.

    Returns:
        0 when the pool has had no arrival for its keep-warm period, else the size that
        would have served ``config.served_fraction`` of ``arrivals`` (at most
        ``config.max_size``).
    """
    if not arrivals or now - arrivals[-1] > keep_warm_seconds(arrivals, config):
        return 0
    window = max(config.burst_window_seconds, refill_seconds)
    return min(config.max_size, served_size(arrivals, window, config.served_fraction))


@dataclass(frozen=True)
class PoolDemand:
    """One pool's claim in :func:`allocate`."""

    key: str
    #: the memory limit of one of its containers
    memory_mb: int
    #: the size its demand asks for (:func:`wanted_size`)
    wanted: int
    #: the operator's static minimum (0 for a pool that only demand made)
    pinned: int = 0
    #: when it was last asked for (the most recent demand is served first)
    last_arrival: float = 0.0


def allocate(demands: Sequence[PoolDemand], budget_mb: int) -> dict[str, int]:
    """The size of every pool: its static minimum, then what its demand asks for, while the
    budget lasts.

    The static minimums always stand (they count against the budget first). The rest of
    the budget is handed out one container at a time, round robin over the pools that
    want more, the most recently asked for first; a pool whose next container does not
    fit stops growing, smaller ones may still grow.

    Args:
        demands: one entry per pool.
        budget_mb: memory (the sum of the containers' limits) the pools may hold.

    Returns:
        Pool key -> size.
    """
    sizes = {d.key: d.pinned for d in demands}
    left = budget_mb - sum(d.pinned * d.memory_mb for d in demands)
    growing = sorted(
        (d for d in demands if d.wanted > d.pinned), key=lambda d: (-d.last_arrival, d.key)
    )
    while growing:
        still = []
        for demand in growing:
            if demand.memory_mb > left:
                continue
            sizes[demand.key] += 1
            left -= demand.memory_mb
            if sizes[demand.key] < demand.wanted:
                still.append(demand)
        growing = still
    return sizes
