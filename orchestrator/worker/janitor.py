"""The janitor: removes what crashed workers, expired sessions and finished runs left behind.

Celery beat runs ``orchestrator.janitor.run`` periodically; it fans out
``orchestrator.janitor.host`` to every live host, which reaps on its own engine:

- managed containers past their ``orchestrator.deadline`` label;
- tool containers whose execution has a final result (unless kept with ``cleanup=false``);
- everything of sessions past their TTL or their hard maximum lifetime;
- managed networks with no container (older than a grace period, so a network made for a
  relic that is about to start survives) and session volumes of sessions that are gone;
- images the orchestrator built or pulled that no container uses: built ones past their
  maximum age, then the least recently used while the host is over its image disk budget
  (:func:`orchestrator.worker.images.reap_images`);
- the never-started container that writes the engine's shared ``/etc/hosts``
  (:mod:`orchestrator.engine.hosts_file`), when a worker killed in its few milliseconds
  left it behind.

It also fails the messages waiting on the queue of a host that is gone, so callers get a
clear ``HostUnavailable`` instead of waiting forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.core.types import Container
from orchestrator.engine import hosts_file
from orchestrator.errors import OrchestratorError, VolumeInUse, VolumeNotFound
from orchestrator.protocol import MANAGED_FILTER, Kind, host_queue, parse_labels
from orchestrator.state import keys, redis_broker, sessions
from orchestrator.state.registry import text
from orchestrator.worker import cleanup, images
from orchestrator.worker.runtime import Runtime

__all__ = ["reap_host", "expired_sessions", "drain_dead_host_queues"]

log = logging.getLogger(__name__)

#: The container that writes the shared ``/etc/hosts`` is created and removed within
#: milliseconds, never started: one older than this was left by a worker killed meanwhile.
HOSTS_WRITER_GRACE_SECONDS = 300.0


def expired_sessions(redis: Any, now: float, max_lifetime_seconds: float) -> dict[str, str]:
    """Sessions whose life is over, each with the limit that ended it.

    Args:
        redis: the registry's Redis client.
        now: the unix time to judge by.
        max_lifetime_seconds: the hard maximum lifetime of a session.

    Returns:
        session id -> ``ttl`` (no keepalive in time) or ``max_lifetime`` (keepalives were
        capped by the hard maximum).
    """
    ended: dict[str, str] = {}
    for raw in redis.smembers(keys.SESSIONS):
        session_id = text(raw) or ""
        times = sessions.expiry(redis, session_id)
        expires = times.get("expires_at")
        if expires is None or expires > now:
            continue
        cap = times.get("created_at", 0.0) + max_lifetime_seconds
        ended[session_id] = "max_lifetime" if expires >= cap - 1 else "ttl"
    return ended


def _reap_container(rt: Runtime, container: Container, reason: str, report: dict[str, Any]) -> None:
    try:
        if rt.engine.remove_container(container.id):  # False: it vanished meanwhile
            report["containers_removed"].append({"name": container.name, "reason": reason})
    except OrchestratorError as exc:
        report["errors"].append(f"{rt.host_name}: {container.name}: {exc}")


def _container_verdict(
    rt: Runtime, container: Container, now: float, ended: dict[str, str]
) -> str | None:
    labels = parse_labels(container.labels)
    session_id = labels.session or ""
    if session_id in ended:
        return f"session {session_id} ended ({ended[session_id]})"
    deadline = labels.deadline
    if labels.kind == Kind.RELIC:
        expires = sessions.expiry(rt.redis, session_id).get("expires_at")
        deadline = expires if expires is not None else deadline
    if deadline and deadline < now:
        return "past its deadline"
    if labels.kind == Kind.TOOL and labels.execution and not labels.keep:
        if (
            rt.executions.result(labels.execution) is not None
            and rt.leases.holder(labels.execution) is None
        ):
            return "its execution has a final result"
    return None


def reap_host(
    rt: Runtime, now: float | None = None, network_grace_seconds: float = 60
) -> dict[str, Any]:
    """One janitor pass over this host's engine.

    A container that vanishes while the pass lists or removes it is simply not counted.

    Args:
        rt: this worker's runtime.
        now: the unix time to judge deadlines by (the current time by default).
        network_grace_seconds: empty networks younger than this are kept.

    Returns:
        ``{"host", "containers_removed": [{name, reason}], "networks_removed",
        "volumes_removed", "images_removed": [{image, reason, size_mb}],
        "sessions_ended": {id: limit}, "errors"}``.

    Raises:
        DockerUnavailable / DockerError: listing the containers or volumes failed.
    """
    now = time.time() if now is None else now
    ended = expired_sessions(rt.redis, now, rt.settings.session_max_lifetime_seconds)
    report: dict[str, Any] = {
        "host": rt.host_name,
        "containers_removed": [],
        "networks_removed": 0,
        "volumes_removed": 0,
        "images_removed": [],
        "sessions_ended": ended,
        "errors": [],
    }
    for container in rt.engine.list_containers([MANAGED_FILTER]):
        reason = _container_verdict(rt, container, now, ended)
        if reason:
            _reap_container(rt, container, reason, report)
    for session_id in ended:
        host_report = cleanup.new_host_report(rt, session_id, True, False)
        cleanup.remove_volumes(rt, host_report)
        cleanup.remove_network(rt, host_report)
        report["volumes_removed"] += host_report["volumes_removed"]
        report["networks_removed"] += host_report["networks_removed"]
        report["errors"].extend(host_report["errors"])
    _reap_hosts_writers(rt, now, report)
    empty = cleanup.remove_empty_networks(rt, network_grace_seconds, now)
    report["networks_removed"] += empty["removed"]
    report["errors"].extend(empty["errors"])
    report["volumes_removed"] += _reap_volumes(rt)
    _reap_images(rt, now, report)
    return report


def _reap_hosts_writers(rt: Runtime, now: float, report: dict[str, Any]) -> None:
    """Remove writers of the shared ``/etc/hosts`` that a killed worker left (not managed:
    no other rule finds them)."""
    try:
        found = rt.engine.list_containers([f"{hosts_file.LABEL}=true"])
    except OrchestratorError as exc:
        report["errors"].append(f"{rt.host_name}: /etc/hosts writers: {exc}")
        return
    for container in found:
        created = container.created_at.timestamp() if container.created_at else now
        if container.status == "created" and now - created > HOSTS_WRITER_GRACE_SECONDS:
            _reap_container(rt, container, "an /etc/hosts writer left behind", report)


def _reap_images(rt: Runtime, now: float, report: dict[str, Any]) -> None:
    """Remove unused images the orchestrator brought, past their age or the disk budget.

    Last, after the containers that used them went; a failure is reported, not raised,
    so the rest of the pass still counts.
    """
    try:
        reaped = images.reap_images(rt.engine, rt.redis, rt.settings, now)
    except OrchestratorError as exc:
        report["errors"].append(f"{rt.host_name}: images: {exc}")
        return
    report["images_removed"].extend(reaped["removed"])
    report["errors"].extend(f"{rt.host_name}: {e}" for e in reaped["errors"])


def _reap_volumes(rt: Runtime) -> int:
    """Remove managed volumes of sessions that are gone; those still in use are kept."""
    removed = 0
    found = rt.engine.list_volumes([MANAGED_FILTER])
    live = {text(s) for s in rt.redis.smembers(keys.SESSIONS)}
    for volume in found:
        if parse_labels(volume.labels).session in live:
            continue
        try:
            rt.engine.remove_volume(volume.name)
            removed += 1
        except VolumeNotFound:
            continue
        except VolumeInUse as exc:
            log.debug("volume %s kept: %s", volume.name, exc)
        except OrchestratorError as exc:
            log.warning("volume %s kept: %s", volume.name, exc)
    return removed


def drain_dead_host_queues(rt: Runtime, broker_redis: Any, mark_failed: Any) -> list[str]:
    """Fail the messages waiting on ``host.<name>`` queues of hosts with no live worker.

    Args:
        rt: the runtime (its host registry says who is alive).
        broker_redis: a redis-py client on the broker's database.
        mark_failed: ``mark_failed(task_id, message)`` stores a failure for a task id.

    Returns:
        The task ids that were failed.
    """
    failed = []
    live = set(rt.hosts.live_hosts())
    # A host counts as gone only after several missed heartbeats: between one worker's
    # shutdown and another's next beat the host may look dead for a moment.
    gone_after = 3 * rt.settings.host_ttl_seconds
    for raw in rt.redis.smembers(keys.HOSTS):
        host = text(raw) or ""
        if host in live or rt.hosts.silent_for(host) < gone_after:
            continue
        for queue in redis_broker.queue_lists(host_queue(host)):
            while (payload := broker_redis.rpop(queue)) is not None:
                task_id = redis_broker.task_id(payload)
                if task_id:
                    mark_failed(
                        task_id,
                        f"host {host!r} has no live worker; this task waited on its queue and "
                        "was dropped. Start a worker on that host, or clean the session up.",
                    )
                    failed.append(task_id)
    return failed
