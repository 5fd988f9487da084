"""Cleanup tasks. ``orchestrator.cleanup.session`` replaces itself by a chord: for each
host, a chain stop → remove containers → remove volumes → remove network on that
host's queue, in parallel across hosts; then one merge into a CleanupReport."""

from __future__ import annotations

from typing import Any

from celery import chain, group, shared_task

from orchestrator.errors import InvalidRequest
from orchestrator.protocol import Task, host_queue, validate_id
from orchestrator.state import sessions
from orchestrator.worker import cleanup
from tasks.forwarding import fan_out
from tasks.runtime import get_runtime
from tasks.tools import RETRY


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field}: must be true or false (got {value!r})")
    return value


def _report(report: Any) -> dict[str, Any]:
    """A per-host report handed from step to step: anyone can send one, so check what
    reaches the engine (the session id, in label filters and the network's name)."""
    if not isinstance(report, dict):
        raise InvalidRequest(f"report: expected a JSON object, got {type(report).__name__}")
    validate_id("report.session_id", report.get("session_id"))
    _flag(report.get("force", True), "report.force")
    _flag(report.get("keep_volumes", False), "report.keep_volumes")
    if not isinstance(report.get("errors", []), list):
        raise InvalidRequest("report.errors: must be a list")
    for count in ("containers_removed", "networks_removed", "volumes_removed"):
        value = report.get(count, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"report.{count}: must be an integer")
    return report


@shared_task(name=Task.CLEANUP_STOP_CONTAINERS.value, **RETRY)
def stop_containers(session_id: str, force: bool, keep_volumes: bool) -> dict[str, Any]:
    """Step 1 on one host: kill (force) or stop gracefully in parallel."""
    validate_id("session_id", session_id)
    _flag(force, "force")
    _flag(keep_volumes, "keep_volumes")
    rt = get_runtime()
    return cleanup.stop_containers(rt, cleanup.new_host_report(rt, session_id, force, keep_volumes))


@shared_task(name=Task.CLEANUP_REMOVE_CONTAINERS.value, **RETRY)
def remove_containers(report: dict[str, Any]) -> dict[str, Any]:
    """Step 2 on one host: remove the session's containers."""
    return cleanup.remove_containers(get_runtime(), _report(report))


@shared_task(name=Task.CLEANUP_REMOVE_VOLUMES.value, **RETRY)
def remove_volumes(report: dict[str, Any]) -> dict[str, Any]:
    """Step 3 on one host: remove the session's named volumes."""
    return cleanup.remove_volumes(get_runtime(), _report(report))


@shared_task(name=Task.CLEANUP_REMOVE_NETWORK.value, **RETRY)
def remove_network(report: dict[str, Any]) -> dict[str, Any]:
    """Step 4 on one host: remove the session network, release its subnet."""
    return cleanup.remove_network(get_runtime(), _report(report))


@shared_task(name=Task.CLEANUP_MERGE.value)
def merge(reports: list[dict[str, Any]], session_id: str, gone: list[str]) -> dict[str, Any]:
    """Final step: merge per-host reports into one CleanupReport; clear the registry."""
    validate_id("session_id", session_id)
    report = cleanup.merge_reports(get_runtime().redis, session_id, reports)
    for host in gone:
        report.errors.append(
            f"{host}: host has no live worker; its janitor removes the session's "
            "containers when it comes back"
        )
    return report.model_dump(mode="json")


def host_chain(host: str, session_id: str, force: bool, keep_volumes: bool) -> Any:
    """The per-host cleanup chain, every step on ``host.<host>``."""
    queue = host_queue(host)
    return chain(
        stop_containers.si(session_id, force, keep_volumes).set(queue=queue),
        remove_containers.s().set(queue=queue),
        remove_volumes.s().set(queue=queue),
        remove_network.s().set(queue=queue),
    )


@shared_task(bind=True, name=Task.CLEANUP_SESSION.value)
def session(
    self: Any, session_id: str, force: bool = True, keep_volumes: bool = False
) -> dict[str, Any]:
    """Stop and remove every container, volume and network of a session, on every host.

    Idempotent: an unknown or already-clean session gives a report with zero counts.
    """
    validate_id("session_id", session_id)
    _flag(force, "force")
    _flag(keep_volumes, "keep_volumes")
    rt = get_runtime()
    live = set(rt.hosts.live_hosts()) | {rt.host_name}
    touched = set(sessions.hosts_of(rt.redis, session_id))
    gone = sorted(touched - live)
    chains = [host_chain(h, session_id, force, keep_volumes) for h in sorted(live)]
    raise self.replace(group(chains) | merge.s(session_id, gone))


@shared_task(name=Task.CLEANUP_NETWORKS_HOST.value, **RETRY)
def networks_host() -> dict[str, Any]:
    """On one host: remove managed networks without containers."""
    return cleanup.remove_empty_networks(get_runtime())


@shared_task(name=Task.CLEANUP_MERGE_NETWORKS.value)
def merge_networks(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-host network cleanups."""
    return {
        "removed": sum(int(r.get("removed", 0)) for r in replies),
        "errors": [e for r in replies for e in r.get("errors", [])],
        "hosts": sorted(str(r.get("host")) for r in replies),
    }


@shared_task(bind=True, name=Task.CLEANUP_NETWORKS.value)
def networks(self: Any) -> dict[str, Any]:
    """Remove managed networks with no containers on every live host."""
    rt = get_runtime()
    hosts = sorted(set(rt.hosts.live_hosts()) | {rt.host_name})
    fan_out(self, networks_host.si(), hosts, merge_networks.s())
