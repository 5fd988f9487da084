"""Session cleanup steps, run per host: stop → remove containers → remove volumes →
remove network; then a merge of the per-host reports. Each step takes the report
built so far and returns it extended; steps never raise, errors go in the report.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator.core.specs import LABEL_PREFIX
from orchestrator.core.stats import parse_docker_time
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import ContainerNotFound, OrchestratorError
from orchestrator.models import CleanupReport
from orchestrator.state import keys, sessions
from orchestrator.state.registry import text
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
Report = dict[str, Any]


def new_host_report(rt: Runtime, session_id: str, force: bool, keep_volumes: bool) -> Report:
    """The empty per-host report the chain starts from."""
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


def _session_filter(session_id: str) -> dict[str, list[str]]:
    return {"label": [f"{LABEL_PREFIX}managed=true", f"{LABEL_PREFIX}session={session_id}"]}


def _session_containers(rt: Runtime, session_id: str) -> list[Any]:
    with docker_errors(f"list containers of session {session_id}"):
        return list(rt.docker.containers.list(all=True, filters=_session_filter(session_id)))


def _note(report: Report, what: str, exc: BaseException) -> None:
    report["errors"].append(f"{report['host']}: {what}: {exc}")


def stop_containers(rt: Runtime, report: Report) -> Report:
    """Kill (force) or stop gracefully, in parallel, every container of the session here."""
    try:
        found = [c for c in _session_containers(rt, report["session_id"]) if _running(c)]
    except OrchestratorError as exc:
        _note(report, "list containers", exc)
        return report

    def halt(container: Any) -> None:
        try:
            with docker_errors(f"stop {container.name}"):
                if report["force"]:
                    container.kill()
                else:
                    container.stop(timeout=GRACE_SECONDS)
        except ContainerNotFound:
            pass
        except OrchestratorError as exc:
            if "is not running" not in str(exc):
                _note(report, f"stop {container.name}", exc)

    if found:
        with ThreadPoolExecutor(max_workers=min(32, len(found))) as pool:
            list(pool.map(halt, found))
    return report


def _running(container: Any) -> bool:
    return container.status in ("running", "restarting", "paused")


def remove_containers(rt: Runtime, report: Report) -> Report:
    """Force-remove every container of the session on this host."""
    try:
        found = _session_containers(rt, report["session_id"])
    except OrchestratorError as exc:
        _note(report, "list containers", exc)
        return report

    def drop(container: Any) -> int:
        try:
            with docker_errors(f"remove {container.name}"):
                container.remove(force=True, v=True)
            return 1
        except ContainerNotFound:
            return 0
        except OrchestratorError as exc:
            _note(report, f"remove {container.name}", exc)
            return 0

    if found:
        with ThreadPoolExecutor(max_workers=min(32, len(found))) as pool:
            report["containers_removed"] += sum(pool.map(drop, found))
    return report


def remove_volumes(rt: Runtime, report: Report) -> Report:
    """Remove the session's named volumes on this host (unless asked to keep them)."""
    if report.get("keep_volumes"):
        return report
    try:
        with docker_errors("list session volumes"):
            found = rt.docker.volumes.list(filters=_session_filter(report["session_id"]))
    except OrchestratorError as exc:
        _note(report, "list volumes", exc)
        return report
    for volume in found:
        try:
            with docker_errors(f"remove volume {volume.name}"):
                volume.remove(force=True)
            report["volumes_removed"] += 1
        except ContainerNotFound:
            continue
        except OrchestratorError as exc:
            _note(report, f"remove volume {volume.name}", exc)
    return report


def remove_network(rt: Runtime, report: Report) -> Report:
    """Remove the session's network on this host and release its subnet."""
    try:
        # Workers in containers that joined it to probe relics hold endpoints on it.
        self_attach.leave(rt.docker, networks.network_name(report["session_id"]))
        report["networks_removed"] += networks.remove_network(
            rt.docker, rt.redis, rt.settings, report["session_id"]
        )
    except OrchestratorError as exc:
        _note(report, "remove network", exc)
    return report


def merge_reports(redis: Any, session_id: str, reports: list[Report]) -> CleanupReport:
    """One CleanupReport from the per-host ones; the session's registry entries are cleared."""
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
    """Drop a session's registry entries, its relics' included."""
    for relic_id in redis.smembers(keys.session_relics(session_id)):
        redis.delete(keys.relic(text(relic_id) or ""))
    sessions.forget(redis, session_id)


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
        with docker_errors("list managed networks"):
            found = rt.docker.networks.list(filters={"label": [f"{LABEL_PREFIX}managed=true"]})
    except OrchestratorError as exc:
        return {"host": rt.host_name, "removed": 0, "errors": [f"{rt.host_name}: {exc}"]}
    for network in found:
        try:
            with docker_errors(f"inspect network {network.name}"):
                network.reload()
                created = parse_docker_time(network.attrs.get("Created"))
                young = created is not None and now - created.timestamp() < grace_seconds
                if network.attrs.get("Containers") or young:
                    continue
                network.remove()
            removed += 1
            session_id = (network.attrs.get("Labels") or {}).get(f"{LABEL_PREFIX}session")
            if session_id:
                networks.SubnetPool.for_settings(rt.redis, rt.settings).release(session_id)
        except ContainerNotFound:
            continue
        except OrchestratorError as exc:
            errors.append(f"{rt.host_name}: remove network {network.name}: {exc}")
    return {"host": rt.host_name, "removed": removed, "errors": errors}
