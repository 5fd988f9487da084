"""Resource usage from a Docker stats payload, computed exactly as ``docker stats`` does.

Every function here is pure: it takes the decoded JSON of
``GET /containers/{id}/stats?stream=false`` (what docker-py's
``container.stats(stream=False)`` returns) and does arithmetic on it. Nothing talks to
the engine, so the maths can be tested against captured payloads.

The payload differs between cgroup v1 and v2 hosts and between engine versions:

* cgroup v1 has ``memory_stats.max_usage``, ``cpu_usage.percpu_usage`` and ``total_*`` keys
  in ``memory_stats.stats``; block I/O ops are spelled ``Read``/``Write``/``Sync``/...;
* cgroup v2 has none of those; ``memory_stats.stats`` holds ``anon``, ``file``,
  ``inactive_file``...; block I/O ops are ``read``/``write``;
* a stopped container yields zeroed CPU counters, an empty ``memory_stats``, no
  ``networks`` key, ``null`` block I/O lists and the zero time ``0001-01-01T00:00:00Z``;
* old engines do not send ``online_cpus``.

Missing or ``null`` keys never raise: they count as zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from orchestrator.models import ContainerStats

__all__ = [
    "block_io_bytes",
    "bytes_to_mb",
    "cpu_percent",
    "cpu_total_seconds",
    "memory_limit_bytes",
    "memory_percent",
    "memory_used_bytes",
    "network_bytes",
    "parse_docker_time",
    "peak_memory_bytes",
    "summarize",
]

_NANOSECONDS_PER_SECOND = 1e9
_BYTES_PER_MB = 1024 * 1024

# RFC 3339 with an optional fraction of any length (Docker sends up to 9 digits).
_DOCKER_TIME = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>Z|z|[+-]\d{2}:?\d{2})?$"
)


def _path(raw: Mapping[str, Any], *keys: str) -> Any:
    """Walk nested mappings; None as soon as a key is missing or a level is not a mapping."""
    node: Any = raw
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _number(value: Any) -> float:
    """A JSON number as a float; anything else (None, strings, booleans) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _integer(value: Any) -> int:
    """A JSON number as an int; anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def _online_cpus(raw: Mapping[str, Any]) -> int:
    """``online_cpus``, else the length of ``percpu_usage`` (older engines), else 1."""
    online = _integer(_path(raw, "cpu_stats", "online_cpus"))
    if online > 0:
        return online
    percpu = _path(raw, "cpu_stats", "cpu_usage", "percpu_usage")
    if isinstance(percpu, list) and percpu:
        return len(percpu)
    return 1


def cpu_percent(raw: Mapping[str, Any]) -> float:
    """CPU usage between the payload's two samples, as ``docker stats`` shows it.

    ``100.0`` means one full core; a container using two cores shows ``200.0``.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``cpu_delta / system_delta * online_cpus * 100`` where the deltas are taken between
        ``cpu_stats`` and ``precpu_stats``; ``0.0`` unless both deltas are positive.
        ``online_cpus`` falls back to the length of ``percpu_usage``, then to 1. Unlike
        ``docker stats``, a payload without a previous sample (``precpu_stats`` zeroed, as
        ``one_shot=True`` returns) gives ``0.0`` rather than the container's lifetime
        average against the host's uptime.
    """
    cpu_delta = _number(_path(raw, "cpu_stats", "cpu_usage", "total_usage")) - _number(
        _path(raw, "precpu_stats", "cpu_usage", "total_usage")
    )
    previous_system = _number(_path(raw, "precpu_stats", "system_cpu_usage"))
    system_delta = _number(_path(raw, "cpu_stats", "system_cpu_usage")) - previous_system
    if previous_system <= 0 or cpu_delta <= 0 or system_delta <= 0:
        # No previous sample (one_shot payload, first frame of a stream, stopped container):
        # a delta against zero would be the lifetime average, not the current usage.
        return 0.0
    return cpu_delta / system_delta * _online_cpus(raw) * 100.0


def memory_used_bytes(raw: Mapping[str, Any]) -> int:
    """Memory in use without the inactive file cache, as ``docker stats`` shows it.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``memory_stats.usage`` minus ``total_inactive_file`` (cgroup v1) when that is smaller
        than the usage, else minus ``inactive_file`` (cgroup v2) when that is smaller, else
        the usage itself; 0 when the payload has no usage (e.g. a stopped container).
    """
    usage = _integer(_path(raw, "memory_stats", "usage"))
    stats = _path(raw, "memory_stats", "stats")
    if not isinstance(stats, Mapping):
        stats = {}
    if "total_inactive_file" in stats:
        total_inactive = _integer(stats["total_inactive_file"])
        if total_inactive < usage:
            return usage - total_inactive
    inactive = _integer(stats.get("inactive_file"))
    if inactive < usage:
        return usage - inactive
    return usage


def memory_limit_bytes(raw: Mapping[str, Any]) -> int:
    """The container's memory limit (the host's memory when it has none).

    Args:
        raw: a Docker stats payload.

    Returns:
        ``memory_stats.limit``; 0 when missing.
    """
    return _integer(_path(raw, "memory_stats", "limit"))


def memory_percent(raw: Mapping[str, Any]) -> float:
    """Memory in use as a percentage of the limit, as ``docker stats`` shows it.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``memory_used_bytes / memory_limit_bytes * 100``; ``0.0`` when the limit is unknown.
    """
    limit = memory_limit_bytes(raw)
    if limit <= 0:
        return 0.0
    return memory_used_bytes(raw) / limit * 100.0


def peak_memory_bytes(raw: Mapping[str, Any]) -> int | None:
    """The highest memory usage the kernel recorded for the container.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``memory_stats.max_usage`` (cgroup v1 only, and it includes the file cache);
        None when absent, as on cgroup v2 or for a stopped container.
    """
    value = _path(raw, "memory_stats", "max_usage")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def cpu_total_seconds(raw: Mapping[str, Any]) -> float:
    """CPU time the container consumed since it started.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``cpu_stats.cpu_usage.total_usage`` (nanoseconds) in seconds; 0.0 when missing.
    """
    return _number(_path(raw, "cpu_stats", "cpu_usage", "total_usage")) / _NANOSECONDS_PER_SECOND


def network_bytes(raw: Mapping[str, Any]) -> tuple[int, int]:
    """Bytes received and sent, summed over every interface.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``(rx_bytes, tx_bytes)``; ``(0, 0)`` when ``networks`` is missing or None (a stopped
        container, or one with ``network_mode="none"``).
    """
    networks = raw.get("networks")
    if not isinstance(networks, Mapping):
        return 0, 0
    rx = tx = 0
    for interface in networks.values():
        if isinstance(interface, Mapping):
            rx += _integer(interface.get("rx_bytes"))
            tx += _integer(interface.get("tx_bytes"))
    return rx, tx


def block_io_bytes(raw: Mapping[str, Any]) -> tuple[int, int]:
    """Bytes read from and written to block devices, summed over every device.

    Args:
        raw: a Docker stats payload.

    Returns:
        ``(read, write)`` from ``blkio_stats.io_service_bytes_recursive``, matching the op
        names ``read``/``write`` case-insensitively (v1 says ``Read``, v2 ``read``; the v1
        ``Sync``/``Async``/``Total`` lines are ignored); ``(0, 0)`` when the list is None.
    """
    entries = _path(raw, "blkio_stats", "io_service_bytes_recursive")
    if not isinstance(entries, list):
        return 0, 0
    read = write = 0
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        op = str(entry.get("op") or "").lower()
        if op == "read":
            read += _integer(entry.get("value"))
        elif op == "write":
            write += _integer(entry.get("value"))
    return read, write


def bytes_to_mb(value: float) -> float:
    """Bytes in MiB (``/ 1024 / 1024``), rounded to 3 decimals.

    Args:
        value: a number of bytes.

    Returns:
        The same quantity in MiB.
    """
    return round(value / _BYTES_PER_MB, 3)


def _as_utc(moment: datetime) -> datetime:
    """An aware datetime; a naive one is taken to be UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def summarize(
    raw: Mapping[str, Any],
    *,
    container_id: str,
    name: str,
    status: str,
    started_at: datetime | None,
    now: datetime,
    kind: str | None = None,
    session_id: str | None = None,
    host: str | None = None,
) -> ContainerStats:
    """Build the :class:`~orchestrator.models.ContainerStats` of one container.

    Args:
        raw: a Docker stats payload.
        container_id: the container's id.
        name: the container's name.
        status: the container's state (``running``, ``exited``...).
        started_at: when the container last started (see :func:`parse_docker_time`).
        now: the current time; naive datetimes are taken to be UTC.
        kind: what the container is to the orchestrator (tool run, relic...).
        session_id: the session the container belongs to.
        host: the Docker host the container runs on.

    Returns:
        The stats: sizes in MiB rounded to 3 decimals, percentages rounded to 2, and
        ``running_seconds`` (rounded to 3 decimals, never negative) only while the
        container is running with a known start time, else 0.
    """
    rx, tx = network_bytes(raw)
    read, write = block_io_bytes(raw)
    running_seconds = 0.0
    if status == "running" and started_at is not None:
        elapsed = (_as_utc(now) - _as_utc(started_at)).total_seconds()
        running_seconds = round(max(elapsed, 0.0), 3)
    return ContainerStats(
        container_id=container_id,
        name=name,
        status=status,
        cpu_percent=round(cpu_percent(raw), 2),
        memory_used_mb=bytes_to_mb(memory_used_bytes(raw)),
        memory_limit_mb=bytes_to_mb(memory_limit_bytes(raw)),
        memory_percent=round(memory_percent(raw), 2),
        network_rx_mb=bytes_to_mb(rx),
        network_tx_mb=bytes_to_mb(tx),
        disk_read_mb=bytes_to_mb(read),
        disk_write_mb=bytes_to_mb(write),
        running_seconds=running_seconds,
        kind=kind,
        session_id=session_id,
        host=host,
    )


def parse_docker_time(value: str | None) -> datetime | None:
    """Parse a Docker timestamp into an aware UTC datetime.

    Docker writes RFC 3339 with up to nine fractional digits
    (``2026-11-28T13:58:01.123456789Z``); the fraction is truncated to microseconds.
    Go's zero time (``0001-01-01T00:00:00Z``), which Docker sends for a container that
    never started or a stopped container's stats, means "unknown".

    Args:
        value: the timestamp, or None.

    Returns:
        The moment in UTC; None for None, an empty string or the zero time. A timestamp
        without a zone is taken to be UTC.

    Raises:
        ValueError: ``value`` is not an RFC 3339 timestamp.
    """
    if value is None or not value.strip():
        return None
    match = _DOCKER_TIME.match(value.strip())
    if match is None:
        raise ValueError(f"not a Docker timestamp: {value!r}")
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or "Z"
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    parsed = datetime.fromisoformat(f"{match['base']}.{fraction}{zone}")
    if parsed.year <= 1:
        return None
    return parsed.astimezone(UTC)
