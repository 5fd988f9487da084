"""Resource usage of managed containers: sampled on one host in parallel, merged across hosts.

A real CPU figure needs two readings of the container's counters. The engine's stats
collector reads every container once per second and a stats request waits for its next
reading, so on Docker 20.10 (measured, cgroup v1):

* ``stats(stream=False, one_shot=True)`` takes 0-1 s but has no previous reading, so its
  CPU share is always 0;
* ``stats(stream=False)`` and "the second frame of ``stats(stream=True)``" are the same
  thing on the engine's side: 1 s when the collector is idle, 1-2 s (mean 1.65 s) when it
  is busy, with a correct CPU share (a container limited to 0.5 core shows 49-51 %).

So :func:`sample` uses the Engine's ``container_stats`` (``/stats?stream=false``): the
same latency as the stream, and one HTTP response with nothing to close. The 1-2 s are
spent waiting for the collector, not working, so :func:`host_stats` samples every running
container at once and a whole host costs about one request, however many containers it
runs.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.core import stats
from orchestrator.core.types import Container
from orchestrator.errors import (
    ContainerNotFound,
    InvalidRequest,
    OrchestratorError,
    RelicNotFound,
)
from orchestrator.models import AggregateStats, ContainerStats
from orchestrator.protocol import label_filter, parse_labels, tool_container_name
from orchestrator.state import keys
from orchestrator.state.registry import ExecutionEntry, text
from orchestrator.state.relics import RelicEntry
from orchestrator.worker import relics
from orchestrator.worker.runtime import TOOL_TASK, Runtime

__all__ = [
    "HostStats",
    "MAX_PARALLEL_SAMPLES",
    "sample",
    "container_stats",
    "host_stats",
    "host_report",
    "find_container",
    "stats_for",
    "sums",
    "percentile",
    "aggregate",
]

log = logging.getLogger(__name__)

MAX_PARALLEL_SAMPLES = 32
SUMMED = ("cpu_percent", "memory_used_mb", "memory_limit_mb", "network_rx_mb", "network_tx_mb")
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class HostStats(BaseModel):
    """What one host replies to ``orchestrator.stats.host``: its containers and its errors."""

    host: str
    containers: list[ContainerStats] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


# -- one host ---------------------------------------------------------------------------


def sample(rt: Runtime, container: Container) -> dict[str, Any] | None:
    """One stats payload of a running container, with a previous reading for CPU.

    Blocks for one to two ticks of the engine's stats collector (1-2 s).

    Args:
        rt: this worker's runtime.
        container: the container, as inspected or listed.

    Returns:
        The payload; None when the container stopped or was removed during the request
        (the engine then answers 200 with an empty body).

    Raises:
        ContainerNotFound: the container is gone.
        DockerUnavailable / DockerError: the engine failed.
    """
    try:
        raw = rt.engine.container_stats(container.id)
    except ValueError:
        # DockerEngine lets the empty body's JSON decoding error out (a ValueError);
        # the Engine contract says it should not.
        return None
    return dict(raw) if raw else None


def container_stats(rt: Runtime, container: Container) -> ContainerStats:
    """The stats of one inspected container (zeros unless it is running).

    Args:
        rt: this worker's runtime (its host name fills a missing host label).
        container: the container, as ``inspect_container`` or ``list_containers`` gave it.

    Raises:
        ContainerNotFound: the container vanished while being sampled.
    """
    raw = sample(rt, container) if container.status == "running" else {}
    if raw is None:  # it stopped meanwhile: report its new state with zeros
        container = rt.engine.inspect_container(container.id)
        raw = {}
    labels = parse_labels(container.labels)
    return stats.summarize(
        raw,
        container_id=container.id,
        name=container.name,
        status=container.status or "unknown",
        started_at=container.started_at,
        now=datetime.now(UTC),
        kind=labels.kind,
        session_id=labels.session,
        host=labels.host or rt.host_name,
    )


def _or_none(rt: Runtime, container: Container) -> ContainerStats | None:
    try:
        return container_stats(rt, container)
    except ContainerNotFound:
        log.debug("container %s vanished while sampled", container.name)
        return None


def host_stats(rt: Runtime) -> list[ContainerStats]:
    """Stats of every managed container of this host, running ones sampled in parallel.

    Containers are those labelled with this host's name, so hosts that share one engine
    (as in tests) do not report each other's containers twice. A container removed while
    it is listed or sampled is left out.

    Args:
        rt: this worker's runtime.

    Returns:
        The stats sorted by session, kind and name.

    Raises:
        DockerUnavailable / DockerError: the engine failed.
    """
    found = rt.engine.list_containers(label_filter(host=rt.host_name))
    workers = max(1, min(MAX_PARALLEL_SAMPLES, len(found)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stats") as pool:
        sampled = list(pool.map(lambda c: _or_none(rt, c), found))
    result = [s for s in sampled if s is not None]
    return sorted(result, key=lambda s: (s.session_id or "", s.kind or "", s.name))


def host_report(rt: Runtime) -> HostStats:
    """This host's reply to a stats fan-out; an engine failure becomes an error entry."""
    try:
        return HostStats(host=rt.host_name, containers=host_stats(rt))
    except OrchestratorError as exc:
        return HostStats(host=rt.host_name, errors=[str(exc)])


# -- one container, by any id ---------------------------------------------------------------


def _check_ident(ident: Any) -> str:
    if not isinstance(ident, str) or not _IDENT.match(ident):
        raise InvalidRequest(
            "container: expected a container id or name, an execution id or a relic id "
            f"(letters, digits, '_', '.', '-'; at most 255), got {ident!r}"
        )
    return ident


def _managed(rt: Runtime, name_or_id: str, what: str) -> Container:
    found = rt.engine.find_container(name_or_id)
    if found is None or not parse_labels(found.labels).managed:
        raise ContainerNotFound(
            f"{what}: no managed container {name_or_id!r} on host {rt.host_name}"
        )
    return found


def _execution_container(rt: Runtime, execution_id: str, entry: ExecutionEntry) -> Container:
    what = f"execution {execution_id}"
    rt.require_local(entry.host, what)
    gone = ContainerNotFound(
        f"{what} finished ({entry.status or 'unknown'}) and its container was "
        "removed; its usage is in the result's stats"
    )
    if entry.finished and _removed_when_done(entry):
        raise gone  # (its removal may still be on its way, behind the worker's runs)
    try:
        return _managed(rt, entry.container_id or tool_container_name(execution_id), what)
    except ContainerNotFound:
        if entry.finished:
            raise gone from None
        if not entry.container_id:
            raise ContainerNotFound(f"{what} has no container yet (image pull or build)") from None
        raise


def _removed_when_done(entry: ExecutionEntry) -> bool:
    """True when the execution's container is removed once it is over (``cleanup``)."""
    try:
        request = json.loads(entry.request) if entry.request else {}
    except ValueError:
        return False
    return isinstance(request, dict) and request.get("cleanup", True) is not False


def _relic_entry(rt: Runtime, relic_id: str) -> RelicEntry | None:
    try:
        return relics.lookup(rt.redis, relic_id)
    except RelicNotFound:
        return None


def find_container(rt: Runtime, ident: Any) -> Container:
    """Resolve an execution id, a relic id, or a container id or name to a local container.

    Args:
        rt: this worker's runtime.
        ident: what the caller gave; execution and relic ids are looked up in the registry
            first (they know their host), then the local engine is asked for a managed
            container of that id or name.

    Returns:
        The container, as inspected.

    Raises:
        InvalidRequest: ``ident`` is not an id.
        WrongHost: it lives on another host (the task forwards itself there).
        HostUnavailable: it lives on a host that has no live worker.
        ContainerNotFound: nothing managed matches on this host.
    """
    ident = _check_ident(ident)
    entry = rt.executions.get(ident)
    if entry.known and (entry.task or TOOL_TASK) == TOOL_TASK:  # relic starts are in flight too
        return _execution_container(rt, ident, entry)
    relic = _relic_entry(rt, ident)
    if relic is not None:
        rt.require_local(relic.host, f"relic {ident}")
        return _managed(rt, relic.container_name, f"relic {ident}")
    return _managed(rt, ident, "container")


def stats_for(rt: Runtime, ident: Any) -> ContainerStats:
    """Stats of the container behind any id (see :func:`find_container`)."""
    return container_stats(rt, find_container(rt, ident))


# -- merge across hosts -----------------------------------------------------------------------


def sums(items: Iterable[ContainerStats]) -> dict[str, float]:
    """Container count, running count and the sum of each :data:`SUMMED` field."""
    listed = list(items)
    totals: dict[str, float] = {
        "containers": float(len(listed)),
        "running": float(sum(1 for s in listed if s.status == "running")),
    }
    for field in SUMMED:
        totals[field] = round(sum(getattr(s, field) for s in listed), 3)
    return totals


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.95 is p95); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _counts(redis: Any, key: str) -> dict[str, int]:
    return {text(k) or "": int(v) for k, v in redis.hgetall(key).items()}


def _durations(redis: Any) -> dict[str, float]:
    values = [float(v) for v in redis.lrange(keys.METRICS_DURATIONS, 0, -1)]
    mean = sum(values) / len(values) if values else 0.0
    return {
        "durations_sampled": float(len(values)),
        "duration_mean_seconds": round(mean, 3),
        "duration_p95_seconds": round(percentile(values, 0.95), 3),
    }


def aggregate(replies: Sequence[dict[str, Any] | HostStats], redis: Any) -> AggregateStats:
    """Merge the hosts' replies with the execution metrics kept in Redis.

    Args:
        replies: one :class:`HostStats` (or its JSON) per host that replied.
        redis: the registry's Redis client.

    Returns:
        Every container; per-session and overall sums (see :func:`sums`); in ``totals`` also
        the mean and p95 of the last finished runs' durations; runs counted by status and by
        tool; the hosts that replied and their errors.
    """
    reports = [HostStats.model_validate(r) for r in replies]
    found = sorted(
        (c for report in reports for c in report.containers),
        key=lambda s: (s.host or "", s.session_id or "", s.kind or "", s.name),
    )
    by_session: dict[str, list[ContainerStats]] = {}
    for item in found:
        by_session.setdefault(item.session_id or "", []).append(item)
    return AggregateStats(
        containers=found,
        sessions={session: sums(items) for session, items in sorted(by_session.items())},
        totals={**sums(found), **_durations(redis)},
        executions_by_status=_counts(redis, keys.METRICS_BY_STATUS),
        executions_by_tool=_counts(redis, keys.METRICS_BY_TOOL),
        hosts=sorted(report.host for report in reports),
        errors=[f"{report.host}: {error}" for report in reports for error in report.errors],
    )
