"""Relics: session-scoped service containers, started in the session network and
waited on until their health endpoint answers.

A relic's container is named from its session and name (``orch-relic-<session>-<name>``)
and carries the network alias ``<name>``, so other containers of the session reach
it at ``http://<container name>:<port>`` (its ``internal_url``) or by its short name.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.core.specs import (
    check_limits,
    check_volumes,
    labels,
    relic_container_name,
    relic_spec,
    volume_name,
)
from orchestrator.core.types import Container, ContainerSpec
from orchestrator.errors import (
    ContainerConflict,
    OrchestratorError,
    RelicConflict,
    RelicNotFound,
    RelicUnhealthy,
    VolumeNotFound,
)
from orchestrator.models import RelicInfo, RelicStartRequest, VolumeMount
from orchestrator.protocol import Kind, Task, label, label_filter
from orchestrator.state import keys, sessions
from orchestrator.state.registry import text
from orchestrator.worker import health, networks, self_attach
from orchestrator.worker.health import container_address, probe, wait_healthy
from orchestrator.worker.images import resolve_image
from orchestrator.worker.runtime import Runtime

__all__ = [
    "relic_container_name",
    "volume_name",
    "start_relic",
    "start_relic_once",
    "StartInProgress",
    "describe",
    "relic_info",
    "local_relics",
    "stop_relic",
    "remove_relic",
    "lookup",
    "probe",
    "wait_healthy",
]

log = logging.getLogger(__name__)
ENGINE_TO_STATUS = {"exited": "stopped", "created": "created", "dead": "dead"}


# -- registry ---------------------------------------------------------------------------


def _register(rt: Runtime, relic_id: str, request: RelicStartRequest, name: str) -> None:
    pipe = rt.redis.pipeline()
    pipe.hset(
        keys.relic(relic_id),
        mapping={
            "relic_name": request.relic_name,
            "session_id": request.session_id,
            "host": rt.host_name,
            "container_name": name,
            "port": request.port,
            "health": request.health_check_endpoint,
        },
    )
    pipe.sadd(keys.session_relics(request.session_id), relic_id)
    pipe.execute()


def lookup(redis: Any, relic_id: str) -> dict[str, str]:
    """The registry entry of a relic.

    Args:
        redis: a redis-py client.
        relic_id: the relic's id.

    Returns:
        Its fields (relic_name, session_id, host, container_name, port, health).

    Raises:
        RelicNotFound: no relic has this id.
    """
    raw = redis.hgetall(keys.relic(relic_id))
    if not raw:
        raise RelicNotFound(f"relic_id: no relic {relic_id!r} (cleaned up, or never started)")
    return {text(k) or "": text(v) or "" for k, v in raw.items()}


def _local_entry(rt: Runtime, relic_id: str) -> dict[str, str]:
    """The registry entry of a relic that lives on this host.

    Raises:
        RelicNotFound / WrongHost / HostUnavailable (see :meth:`Runtime.require_local`).
    """
    entry = lookup(rt.redis, relic_id)
    rt.require_local(entry.get("host", ""), f"relic {relic_id}")
    return entry


def _unregister(redis: Any, relic_id: str, session_id: str) -> None:
    pipe = redis.pipeline()
    pipe.delete(keys.relic(relic_id))
    pipe.srem(keys.session_relics(session_id), relic_id)
    pipe.execute()


# -- start ------------------------------------------------------------------------------


def _volumes(rt: Runtime, request: RelicStartRequest) -> dict[str, str]:
    """Named volumes created per session and labelled: request name -> engine name."""
    return {
        mount.source: _session_volume(rt, request, mount)
        for mount in request.volumes
        if not mount.is_bind
    }


def _session_volume(rt: Runtime, request: RelicStartRequest, mount: VolumeMount) -> str:
    name = volume_name(request.session_id, mount.source)
    try:
        rt.engine.inspect_volume(name)
    except VolumeNotFound:
        volume_labels = labels("volume", request.session_id, 0, rt.host_name)
        rt.engine.create_volume(name, volume_labels)
    return name


def _spec(
    rt: Runtime, request: RelicStartRequest, relic_id: str, image: str, network: str | None
) -> ContainerSpec:
    expires = sessions.expiry(rt.redis, request.session_id).get("expires_at", 0)
    return relic_spec(
        request,
        relic_id=relic_id,
        image=image,
        settings=rt.settings,
        expires_at=expires,
        network=network,
        volume_names=_volumes(rt, request),
    )


def _check(rt: Runtime, request: RelicStartRequest) -> None:
    """Reject a request that breaks server policy, before anything is touched."""
    check_limits(request.resource_limits, rt.settings)
    check_volumes(request.volumes, rt.settings)
    if request.health_timeout_seconds > rt.settings.relic_max_health_timeout_seconds:
        raise RelicUnhealthy(
            f"health_timeout_seconds: above the server maximum "
            f"{rt.settings.relic_max_health_timeout_seconds}"
        )


def start_relic(rt: Runtime, request: RelicStartRequest, relic_id: str) -> RelicInfo:
    """Start a relic (or resume one this relic id already started) and wait until healthy.

    Args:
        rt: this worker's runtime.
        request: the validated request.
        relic_id: the relic's id (the start task's id).

    Returns:
        The healthy relic.

    Raises:
        WrongHost: another host owns the session (the task forwards itself).
        RelicConflict: a different relic of this session has the same name.
        RelicExited / RelicUnhealthy: it never became healthy; nothing is left behind.
    """
    _check(rt, request)
    sessions.require_owner(rt, request.session_id)
    sessions.record_host(rt, request.session_id)
    name = relic_container_name(request.session_id, request.relic_name)
    container = _existing(rt, name, relic_id)
    network = None
    if request.create_private_network:
        session_network = networks.ensure_network(
            rt.engine, rt.redis, rt.settings, request.session_id
        )
        network = session_network.name
    if container is None:
        image = resolve_image(
            rt.engine, rt.redis, rt.settings, request.image, request.build, request.relic_name
        )
        container = _create(rt, _spec(rt, request, relic_id, image, network), relic_id)
    _register(rt, relic_id, request, name)
    try:
        healthy = _start_and_wait(rt, container, request, network)
    except BaseException:
        rt.engine.remove_container(name)
        _unregister(rt.redis, relic_id, request.session_id)
        raise
    return describe(rt, healthy, relic_id, healthy=True)


def _start_and_wait(
    rt: Runtime, container: Container, request: RelicStartRequest, network: str | None
) -> Container:
    """Start the container unless it runs already, then wait until it is healthy.

    Returns:
        The container, inspected once healthy.
    """
    if container.status == "created":
        _publish(rt, container, request, network)
        rt.engine.start_container(container.id)
    # A worker in a container reaches the relic only from inside its network.
    with self_attach.attached(rt.engine, network or "bridge"):
        wait_healthy(rt.engine, container, network, request)
    return rt.engine.inspect_container(container.id)


def _publish(
    rt: Runtime, container: Container, request: RelicStartRequest, network: str | None
) -> None:
    """Published ports need a non-internal network: join the default bridge as well."""
    if not request.ports or not network:
        return
    rt.engine.connect_network("bridge", container.id)


class StartInProgress(OrchestratorError):
    """Raised when another live worker is starting this relic right now."""


def start_relic_once(rt: Runtime, request: RelicStartRequest, relic_id: str) -> RelicInfo:
    """:func:`start_relic` under a lease, kept in the in-flight registry while it runs.

    A worker killed mid-start stops renewing the lease; any worker's reaper then
    re-enqueues the start (same relic id) on the session's host, where it attaches to
    the container made so far, or to nothing, and ends healthy or cleanly failed.

    Args:
        rt: this worker's runtime.
        request: the validated request.
        relic_id: the relic's id (the start task's id).

    Returns:
        The healthy relic.

    Raises:
        StartInProgress: another worker holds this start's lease.
    """
    if not rt.leases.acquire(relic_id):
        raise StartInProgress(f"relic {relic_id} is being started by another worker")
    try:
        rt.executions.start(
            relic_id,
            {
                "task": Task.RELICS_START.value,
                "host": rt.host_name,
                "session_id": request.session_id,
                "request": request.model_dump(mode="json"),
            },
        )
        try:
            return start_relic(rt, request, relic_id)
        finally:
            rt.executions.forget(relic_id)
    finally:
        rt.leases.release(relic_id)


def _existing(rt: Runtime, name: str, relic_id: str) -> Container | None:
    """This relic's container if it is there and alive; a dead one is removed.

    Raises:
        RelicConflict: the container belongs to another relic.
    """
    found = rt.engine.find_container(name)
    if found is None:
        return None
    owner = found.labels.get(label("relic"))
    if owner != relic_id:
        raise RelicConflict(
            f"relic_name: the session already has relic {owner} under this name; "
            "stop and remove it first"
        )
    if found.finished:
        rt.engine.remove_container(name)
        return None
    return found


def _create(rt: Runtime, spec: ContainerSpec, relic_id: str) -> Container:
    try:
        return rt.engine.create_container(spec)
    except ContainerConflict:
        found = _existing(rt, spec.name, relic_id)
        if found is None:
            raise
        return found


# -- info, list, stop, remove --------------------------------------------------------------


def _session_network(container: Container) -> str | None:
    return next((n for n in container.networks if n.startswith("session_")), None)


def describe(
    rt: Runtime, container: Container, relic_id: str, healthy: bool | None = None
) -> RelicInfo:
    """RelicInfo from an inspected container; health probed when not given.

    Args:
        rt: this worker's runtime.
        container: the relic's container, as last inspected.
        relic_id: the relic's id.
        healthy: the known health; None to probe the endpoint now (running relics only).

    Returns:
        The relic as the engine sees it.
    """
    status = ENGINE_TO_STATUS.get(container.status, container.status or "unknown")
    network = _session_network(container)
    address = container_address(container, network)
    port = int(container.labels.get(label("port"), "8000"))
    if healthy is None:
        healthy = False
        if status == "running" and address:
            path = text(rt.redis.hget(keys.relic(relic_id), "health")) or "/health"
            with self_attach.attached(rt.engine, network or "bridge"):
                healthy = health.probe(address, port, path, 0.5)
    ports = {cport: int(bindings[0][1]) for cport, bindings in container.ports.items() if bindings}
    return RelicInfo(
        relic_id=relic_id,
        relic_name=container.labels.get(label("relic_name"), ""),
        session_id=container.labels.get(label("session"), ""),
        container_id=container.id,
        container_name=container.name,
        status=status,
        healthy=healthy,
        internal_url=f"http://{container.name}:{port}" if network else f"http://{address}:{port}",
        network=network,
        ip_address=address,
        host=rt.host_name,
        started_at=container.started_at,
        ports=ports,
    )


def relic_info(rt: Runtime, relic_id: str) -> RelicInfo:
    """The relic's state as the engine sees it.

    Args:
        rt: this worker's runtime.
        relic_id: the relic's id.

    Returns:
        The relic; status ``removed`` when its container is gone.

    Raises:
        RelicNotFound / WrongHost (another live host has it) / HostUnavailable (its host has
        no live worker).
    """
    entry = _local_entry(rt, relic_id)
    container = rt.engine.find_container(entry["container_name"])
    if container is None:
        return RelicInfo(
            relic_id=relic_id,
            relic_name=entry.get("relic_name", ""),
            session_id=entry.get("session_id", ""),
            container_name=entry["container_name"],
            status="removed",
            host=rt.host_name,
        )
    return describe(rt, container, relic_id)


def local_relics(rt: Runtime, session_id: str | None) -> list[RelicInfo]:
    """Relics whose containers are on this host (all, or one session's).

    Args:
        rt: this worker's runtime.
        session_id: only this session's relics; every relic when None.

    Returns:
        One RelicInfo per relic container, health probed.
    """
    selection = {"kind": Kind.RELIC.value}
    if session_id:
        selection["session"] = session_id
    found = rt.engine.list_containers(label_filter(**selection))
    return [describe(rt, c, c.labels.get(label("relic"), "")) for c in found]


def stop_relic(rt: Runtime, relic_id: str, timeout_seconds: int = 10) -> RelicInfo:
    """Stop gracefully (SIGTERM), killing after ``timeout_seconds``.

    Args:
        rt: this worker's runtime.
        relic_id: the relic's id.
        timeout_seconds: the grace period before SIGKILL.

    Returns:
        The stopped relic (``healthy`` False).

    Raises:
        RelicNotFound / WrongHost / HostUnavailable: see :func:`relic_info`.
    """
    entry = _local_entry(rt, relic_id)
    container = rt.engine.find_container(entry["container_name"])
    if container is None:
        return relic_info(rt, relic_id)
    rt.engine.stop_container(container.id, timeout_seconds)
    return describe(rt, rt.engine.inspect_container(container.id), relic_id, healthy=False)


def remove_relic(rt: Runtime, relic_id: str) -> dict[str, Any]:
    """Remove the relic's container (its session volumes stay until session cleanup).

    Args:
        rt: this worker's runtime.
        relic_id: the relic's id.

    Returns:
        ``{"relic_id", "removed"}``: removed is False when the container was gone already.

    Raises:
        RelicNotFound / WrongHost / HostUnavailable: see :func:`relic_info`.
    """
    entry = _local_entry(rt, relic_id)
    removed = rt.engine.remove_container(entry["container_name"])
    _unregister(rt.redis, relic_id, entry.get("session_id", ""))
    return {"relic_id": relic_id, "removed": removed}
