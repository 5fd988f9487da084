"""Session cleanup steps, run per host: stop → remove containers → remove volumes →
remove network; then a merge of the per-host reports. Each step takes the report
built so far and returns it extended; steps never raise, errors go in the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from orchestrator.core.types import Container, Network
from orchestrator.errors import (
    ContainerNotFound,
    NetworkInUse,
    NetworkNotFound,
    OrchestratorError,
    VolumeNotFound,
)
from orchestrator.models import CleanupReport
from orchestrator.protocol import MANAGED_FILTER, label_filter, parse_labels
from orchestrator.state import keys, quotas, sessions
from orchestrator.state.registry import text
from orchestrator.state.subnets import SubnetPool
from orchestrator.worker import networks, self_attach
from orchestrator.worker.runtime import Runtime

__all__ = [
    "new_host_report",
    "stop_containers",
    "remove_containers",
    "remove_volumes",
    "remove_network",
    "merge_reports",
    "forget_session",
    "remove_empty_networks",
    "GRACE_SECONDS",
]

log = logging.getLogger(__name__)
GRACE_SECONDS = 10
MAX_PARALLEL = 32
Report = dict[str, Any]
T = TypeVar("T")


def new_host_report(rt: Runtime, session_id: str, force: bool, keep_volumes: bool) -> Report:
    """The empty per-host report the chain starts from.

    Args:
        rt: this worker's runtime.
        session_id: the session being cleaned up.
        force: kill the containers instead of stopping them gracefully.
        keep_volumes: leave the session's named volumes in place.

    Returns:
        ``{"session_id", "host", "force", "keep_volumes", "containers_removed",
        "networks_removed", "volumes_removed", "errors"}`` with zero counts.
    """
    return {
        "session_id": session_id,
        "host": rt.host_name,
        "force": force,
        "keep_volumes": keep_volumes,
        "containers_removed": 0,
        "networks_removed": 0,
        "volumes_removed": 0,
        "errors": [],
    }


def _session_containers(rt: Runtime, session_id: str) -> list[Container]:
    """The session's containers on this host, stopped ones included; vanishing ones left out."""
    return rt.engine.list_containers(label_filter(session=session_id))


def _note(report: Report, what: str, exc: BaseException) -> None:
    report["errors"].append(f"{report['host']}: {what}: {exc}")


def _in_parallel(work: Callable[[Container], T], found: list[Container]) -> list[T]:
    """``work`` applied to every container, on up to :data:`MAX_PARALLEL` threads."""
    if not found:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(found))) as pool:
        return list(pool.map(work, found))


def stop_containers(rt: Runtime, report: Report) -> Report:
    """Kill (force) or stop gracefully, in parallel, every container of the session here.

    Args:
        rt: this worker's runtime.
        report: the host report so far (see :func:`new_host_report`).

    Returns:
        The same report; a container that stopped or vanished meanwhile is no error.
    """
    try:
        found = [c for c in _session_containers(rt, report["session_id"]) if c.running]
    except OrchestratorError as exc:
        _note(report, "list containers", exc)
        return report

    def halt(container: Container) -> None:
        try:
            if report["force"]:
                rt.engine.kill_container(container.id)  # False: not running any more
            else:
                rt.engine.stop_container(container.id, GRACE_SECONDS)
        except ContainerNotFound:
            pass
        except OrchestratorError as exc:
            _note(report, f"stop {container.name}", exc)

    _in_parallel(halt, found)
    return report


def remove_containers(rt: Runtime, report: Report) -> Report:
    """Force-remove every container of the session on this host.

    Args:
        rt: this worker's runtime.
        report: the host report so far.

    Returns:
        The same report, ``containers_removed`` counting the containers this step removed
        (not those that vanished meanwhile).
    """
    try:
        found = _session_containers(rt, report["session_id"])
    except OrchestratorError as exc:
        _note(report, "list containers", exc)
        return report

    def drop(container: Container) -> int:
        try:
            return 1 if rt.engine.remove_container(container.id) else 0
        except OrchestratorError as exc:
            _note(report, f"remove {container.name}", exc)
            return 0

    report["containers_removed"] += sum(_in_parallel(drop, found))
    return report


def remove_volumes(rt: Runtime, report: Report) -> Report:
    """Remove the session's named volumes on this host (unless asked to keep them).

    Args:
        rt: this worker's runtime.
        report: the host report so far.

    Returns:
        The same report; a volume still in use is an error entry.
    """
    if report.get("keep_volumes"):
        return report
    try:
        found = rt.engine.list_volumes(label_filter(session=report["session_id"]))
    except OrchestratorError as exc:
        _note(report, "list volumes", exc)
        return report
    for volume in found:
        try:
            rt.engine.remove_volume(volume.name)
            report["volumes_removed"] += 1
        except VolumeNotFound:
            continue
        except OrchestratorError as exc:  # VolumeInUse among others
            _note(report, f"remove volume {volume.name}", exc)
    return report


def remove_network(rt: Runtime, report: Report) -> Report:
    """Remove the session's network on this host and release its subnet.

    Args:
        rt: this worker's runtime.
        report: the host report so far.

    Returns:
        The same report; a network still in use is an error entry.
    """
    try:
        # Workers in containers that joined it to probe relics hold endpoints on it.
        self_attach.leave(rt.engine, networks.network_name(report["session_id"]))
        report["networks_removed"] += networks.remove_network(
            rt.engine, rt.redis, rt.settings, report["session_id"]
        )
    except OrchestratorError as exc:
        _note(report, "remove network", exc)
    return report


def merge_reports(redis: Any, session_id: str, reports: list[Report]) -> CleanupReport:
    """One CleanupReport from the per-host ones; the session's registry entries are cleared.

    Args:
        redis: the registry's Redis client.
        session_id: the session cleaned up.
        reports: the per-host reports (missing fields count as zero).

    Returns:
        The summed counts, every host's errors, and the hosts that replied, sorted.
    """
    merged = CleanupReport(session_id=session_id)
    for report in reports:
        merged.containers_removed += int(report.get("containers_removed", 0))
        merged.networks_removed += int(report.get("networks_removed", 0))
        merged.volumes_removed += int(report.get("volumes_removed", 0))
        merged.errors.extend(report.get("errors", []))
        if report.get("host"):
            merged.hosts.append(str(report["host"]))
    forget_session(redis, session_id)
    merged.hosts.sort()
    return merged


def forget_session(redis: Any, session_id: str) -> None:
    """Drop a session's registry entries, its relics' and its quota holders included.

    Args:
        redis: the registry's Redis client.
        session_id: the session to forget.
    """
    for relic_id in redis.smembers(keys.session_relics(session_id)):
        redis.delete(keys.relic(text(relic_id) or ""))
    sessions.forget(redis, session_id)
    quotas.release_session(redis, session_id)  # its containers are gone: so is its share


def _young(network: Network, now: float, grace_seconds: float) -> bool:
    created = network.created_at
    return created is not None and now - created.timestamp() < grace_seconds


def remove_empty_networks(
    rt: Runtime, grace_seconds: float = 0.0, now: float | None = None
) -> dict[str, Any]:
    """Remove managed networks on this host that no container uses; release their subnets.

    Args:
        rt: this worker's runtime.
        grace_seconds: keep networks younger than this (one may be about to get a relic).
        now: unix time the age is measured against (the current time by default).

    Returns:
        ``{"host", "removed", "errors"}``; errors are collected, never raised.
    """
    now = time.time() if now is None else now
    removed, errors = 0, []
    try:
        found = rt.engine.list_networks([MANAGED_FILTER])
    except OrchestratorError as exc:
        return {"host": rt.host_name, "removed": 0, "errors": [f"{rt.host_name}: {exc}"]}
    pool = SubnetPool.for_settings(rt.redis, rt.settings)
    for network in found:
        if network.containers or _young(network, now, grace_seconds):
            continue
        try:
            rt.engine.remove_network(network.id)
        except (NetworkNotFound, NetworkInUse):
            continue  # removed meanwhile, or a container joined it since it was listed
        except OrchestratorError as exc:
            errors.append(f"{rt.host_name}: remove network {network.name}: {exc}")
            continue
        removed += 1
        session_id = parse_labels(network.labels).session
        if session_id:
            pool.release(session_id)
    return {"host": rt.host_name, "removed": removed, "errors": errors}
