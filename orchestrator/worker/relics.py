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
    limit_options,
    sandbox_options,
)
from orchestrator.core.stats import parse_docker_time
from orchestrator.engine import containers
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    OrchestratorError,
    RelicConflict,
    RelicNotFound,
    RelicUnhealthy,
)
from orchestrator.models import RelicInfo, RelicStartRequest, VolumeMount
from orchestrator.state import keys, sessions
from orchestrator.state.registry import text
from orchestrator.worker import networks, self_attach
from orchestrator.worker.health import container_address, probe, wait_healthy
from orchestrator.worker.images import resolve_image
from orchestrator.worker.runtime import Runtime

__all__ = [
    "relic_container_name",
    "volume_name",
    "start_relic",
    "start_relic_once",
    "StartInProgress",
    "relic_info",
    "local_relics",
    "stop_relic",
    "remove_relic",
    "lookup",
    "probe",
]

log = logging.getLogger(__name__)
ENGINE_TO_STATUS = {"exited": "stopped", "created": "created", "dead": "dead"}


def relic_container_name(session_id: str, relic_name: str) -> str:
    """The relic's container name: unique per session and relic name."""
    return f"orch-relic-{session_id}-{relic_name}"


def volume_name(session_id: str, name: str) -> str:
    """The engine-side name of a relic's named volume, scoped to its session."""
    return f"orch-{session_id}-{name}"


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


def _volumes(rt: Runtime, request: RelicStartRequest) -> dict[str, dict[str, str]]:
    """Bind mounts as given; named volumes created per session and labelled."""
    mounts: dict[str, dict[str, str]] = {}
    for mount in request.volumes:
        source = mount.source if mount.is_bind else _session_volume(rt, request, mount)
        mounts[source] = {"bind": mount.target, "mode": "ro" if mount.read_only else "rw"}
    return mounts


def _session_volume(rt: Runtime, request: RelicStartRequest, mount: VolumeMount) -> str:
    name = volume_name(request.session_id, mount.source)
    try:
        with docker_errors(f"inspect volume {name}"):
            rt.docker.volumes.get(name)
    except ContainerNotFound:
        volume_labels = labels("volume", request.session_id, 0, rt.host_name)
        with docker_errors(f"create volume {name}"):
            rt.docker.volumes.create(name=name, labels=volume_labels)
    return name


def _config(
    rt: Runtime, request: RelicStartRequest, relic_id: str, image: str, network: str | None
) -> dict[str, Any]:
    limits = check_limits(request.resource_limits, rt.settings)
    expires = sessions.expiry(rt.redis, request.session_id).get("expires_at", 0)
    config: dict[str, Any] = {
        "image": image,
        "command": request.command,
        "name": relic_container_name(request.session_id, request.relic_name),
        "environment": dict(request.environment),
        "labels": labels(
            "relic",
            request.session_id,
            expires,
            rt.host_name,
            relic=relic_id,
            relic_name=request.relic_name,
            port=str(request.port),
        ),
        "volumes": _volumes(rt, request),
        "detach": True,
        **limit_options(limits),
        **sandbox_options(rt.settings, cap_add=rt.settings.relic_cap_add),
    }
    if network:
        config["network"] = network
        config["networking_config"] = {
            network: rt.docker.api.create_endpoint_config(aliases=[request.relic_name])
        }
    else:
        config["network_mode"] = "bridge"
    if request.ports:
        config["ports"] = {f"{cport}/tcp": hport for cport, hport in request.ports.items()}
    return config


def start_relic(rt: Runtime, request: RelicStartRequest, relic_id: str) -> RelicInfo:
    """Start a relic (or resume one this relic id already started) and wait until healthy.

    Raises:
        WrongHost: another host owns the session (the task forwards itself).
        RelicConflict: a different relic of this session has the same name.
        RelicExited / RelicUnhealthy: it never became healthy; nothing is left behind.
    """
    check_limits(request.resource_limits, rt.settings)
    check_volumes(request.volumes, rt.settings)
    if request.health_timeout_seconds > rt.settings.relic_max_health_timeout_seconds:
        raise RelicUnhealthy(
            f"health_timeout_seconds: above the server maximum "
            f"{rt.settings.relic_max_health_timeout_seconds}"
        )
    sessions.require_owner(rt, request.session_id)
    sessions.record_host(rt, request.session_id)
    name = relic_container_name(request.session_id, request.relic_name)
    container = _existing(rt, name, relic_id)
    network = None
    if request.create_private_network:
        network = networks.ensure_network(rt.docker, rt.redis, rt.settings, request.session_id)
        network = str(network.name)
    if container is None:
        image = resolve_image(
            rt.docker, rt.redis, rt.settings, request.image, request.build, request.relic_name
        )
        container = _create(rt, _config(rt, request, relic_id, image, network), relic_id)
    _register(rt, relic_id, request, name)
    try:
        if containers.state(container).get("Status") == "created":
            _publish(rt, container, request, network)
            with docker_errors(f"start relic {name}"):
                container.start()
        # A worker in a container reaches the relic only from inside its network.
        with self_attach.attached(rt.docker, network or "bridge"):
            wait_healthy(container, network, request)
    except BaseException:
        containers.remove(rt.docker, name)
        _unregister(rt.redis, relic_id, request.session_id)
        raise
    return describe(rt, container, relic_id, healthy=True)


def _publish(rt: Runtime, container: Any, request: RelicStartRequest, network: str | None) -> None:
    """Published ports need a non-internal network: join the default bridge as well."""
    if not request.ports or not network:
        return
    with docker_errors(f"connect {container.name} to the default bridge"):
        rt.docker.networks.get("bridge").connect(container)


class StartInProgress(OrchestratorError):
    """Raised when another live worker is starting this relic right now."""


def start_relic_once(rt: Runtime, request: RelicStartRequest, relic_id: str) -> RelicInfo:
    """:func:`start_relic` under a lease, kept in the in-flight registry while it runs.

    A worker killed mid-start stops renewing the lease; any worker's reaper then
    re-enqueues the start (same relic id) on the session's host, where it attaches to
    the container made so far, or to nothing, and ends healthy or cleanly failed.

    Raises:
        StartInProgress: another worker holds this start's lease.
    """
    if not rt.leases.acquire(relic_id):
        raise StartInProgress(f"relic {relic_id} is being started by another worker")
    try:
        rt.executions.start(
            relic_id,
            {
                "task": "orchestrator.relics.start",
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


def _existing(rt: Runtime, name: str, relic_id: str) -> Any | None:
    found = containers.find(rt.docker, name)
    if found is None:
        return None
    owner = found.labels.get("orchestrator.relic")
    if owner != relic_id:
        raise RelicConflict(
            f"relic_name: the session already has relic {owner} under this name; "
            "stop and remove it first"
        )
    if containers.state(found).get("Status") in ("exited", "dead"):
        containers.remove(rt.docker, name)
        return None
    return found


def _create(rt: Runtime, config: dict[str, Any], relic_id: str) -> Any:
    try:
        return containers.create(rt.docker, config)
    except ContainerConflict:
        found = _existing(rt, config["name"], relic_id)
        if found is None:
            raise
        return found


# -- info, list, stop, remove --------------------------------------------------------------


def describe(rt: Runtime, container: Any, relic_id: str, healthy: bool | None = None) -> RelicInfo:
    """RelicInfo from an inspected container; health probed when not given."""
    labels_ = container.labels
    state = containers.state(container)
    status = ENGINE_TO_STATUS.get(state.get("Status", ""), state.get("Status", "unknown"))
    nets = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    network = next((n for n in nets if n.startswith("session_")), None)
    address = container_address(container, network)
    port = int(labels_.get("orchestrator.port", "8000"))
    if healthy is None:
        healthy = False
        if status == "running" and address:
            path = text(rt.redis.hget(keys.relic(relic_id), "health")) or "/health"
            with self_attach.attached(rt.docker, network or "bridge"):
                healthy = probe(address, port, path, 0.5)
    ports = {
        cport: int(bindings[0]["HostPort"])
        for cport, bindings in (
            (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
        ).items()
        if bindings
    }
    return RelicInfo(
        relic_id=relic_id,
        relic_name=labels_.get("orchestrator.relic_name", ""),
        session_id=labels_.get("orchestrator.session", ""),
        container_id=container.id,
        container_name=container.name,
        status=status,
        healthy=healthy,
        internal_url=f"http://{container.name}:{port}" if network else f"http://{address}:{port}",
        network=network,
        ip_address=address,
        host=rt.host_name,
        started_at=parse_docker_time(state.get("StartedAt")),
        ports=ports,
    )


def relic_info(rt: Runtime, relic_id: str) -> RelicInfo:
    """The relic's state as the engine sees it.

    Raises:
        RelicNotFound / WrongHost (another live host has it) / HostUnavailable (its host has
        no live worker).
    """
    entry = _local_entry(rt, relic_id)
    container = containers.find(rt.docker, entry["container_name"])
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
    """Relics whose containers are on this host (all, or one session's)."""
    filters = ["orchestrator.managed=true", "orchestrator.kind=relic"]
    if session_id:
        filters.append(f"orchestrator.session={session_id}")
    with docker_errors("list relics"):
        found = rt.docker.containers.list(all=True, filters={"label": filters})
    return [describe(rt, c, c.labels.get("orchestrator.relic", "")) for c in found]


def stop_relic(rt: Runtime, relic_id: str, timeout_seconds: int = 10) -> RelicInfo:
    """Stop gracefully (SIGTERM), killing after ``timeout_seconds``."""
    entry = _local_entry(rt, relic_id)
    container = containers.find(rt.docker, entry["container_name"])
    if container is None:
        return relic_info(rt, relic_id)
    with docker_errors(f"stop relic {container.name}"):
        container.stop(timeout=timeout_seconds)
        container.reload()
    return describe(rt, container, relic_id, healthy=False)


def remove_relic(rt: Runtime, relic_id: str) -> dict[str, Any]:
    """Remove the relic's container (its session volumes stay until session cleanup)."""
    entry = _local_entry(rt, relic_id)
    try:
        removed = containers.remove(rt.docker, entry["container_name"])
    except ContainerNotFound:
        removed = False
    _unregister(rt.redis, relic_id, entry.get("session_id", ""))
    return {"relic_id": relic_id, "removed": removed}
