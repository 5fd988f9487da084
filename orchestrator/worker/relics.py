"""Relics: session-scoped service containers, started in the session network and
waited on until their health endpoint answers.

A relic's container is named from its session and name
(``orch-relic-<len(session)>-<session>-<name>``, see
:func:`~orchestrator.core.specs.session_scoped_name`) and carries the network alias
``<name>``, so other containers of the session reach it at
``http://<container name>:<port>`` (its ``internal_url``) or by its short name. Relics
started before that naming keep their old names: every lookup goes through the registry's
stored container name or the labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.core import redaction, secrets
from orchestrator.core.specs import (
    check_limits,
    check_network,
    check_request_size,
    check_volumes,
    relic_container_name,
    relic_spec,
    volume_name,
)
from orchestrator.core.types import Container, ContainerSpec
from orchestrator.errors import (
    ContainerConflict,
    LimitExceeded,
    OrchestratorError,
    RelicConflict,
    RelicError,
)
from orchestrator.models import RelicInfo, RelicStartRequest
from orchestrator.protocol import Kind, Task, label, label_filter
from orchestrator.settings import env_name
from orchestrator.state import keys, sessions
from orchestrator.state import relics as relic_registry
from orchestrator.state.quotas import Quotas
from orchestrator.state.registry import text
from orchestrator.state.relics import RelicEntry
from orchestrator.worker import health, networks, self_attach, volumes
from orchestrator.worker.health import container_address, probe, wait_healthy
from orchestrator.worker.images import check_build_request, resolve_image
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
#: The registry's health path of a relic without one (a workspace: ready once it runs).
NO_HEALTH_CHECK = "none"
ENGINE_TO_STATUS = {"exited": "stopped", "created": "created", "dead": "dead"}


# -- registry ---------------------------------------------------------------------------


def _register(rt: Runtime, relic_id: str, request: RelicStartRequest, name: str) -> None:
    entry = RelicEntry(
        relic_id=relic_id,
        relic_name=request.relic_name,
        session_id=request.session_id,
        host=rt.host_name,
        container_name=name,
        port=request.port,
        health=request.health_check_endpoint or NO_HEALTH_CHECK,
        secret_names=tuple(request.secret_parameters),
    )
    relic_registry.register(rt.redis, entry)
    # The longest an exec in the relic may run (orchestrator.worker.relic_exec).
    rt.redis.hset(keys.relic(relic_id), "timeout_seconds", request.resource_limits.timeout_seconds)


def lookup(redis: Any, relic_id: str) -> RelicEntry:
    """The registry entry of a relic.

    Raises:
        RelicNotFound: no relic has this id.
    """
    return relic_registry.lookup(redis, relic_id)


def _local_entry(rt: Runtime, relic_id: str) -> RelicEntry:
    """The registry entry of a relic that lives on this host.

    Raises:
        RelicNotFound / WrongHost / HostUnavailable (see :meth:`Runtime.require_local`).
    """
    entry = lookup(rt.redis, relic_id)
    rt.require_local(entry.host, f"relic {relic_id}")
    return entry


def _unregister(redis: Any, relic_id: str, session_id: str) -> None:
    relic_registry.unregister(redis, relic_id, session_id)


# -- start ------------------------------------------------------------------------------


def _spec(
    rt: Runtime, request: RelicStartRequest, relic_id: str, image: str, network: str | None
) -> ContainerSpec:
    expires = sessions.expiry(rt.redis, request.session_id).get("expires_at", 0)
    volume_names = volumes.session_volumes(rt, request.session_id, request.volumes)
    # relic_spec checks the bind mounts again: after the pull or build, right before create.
    return relic_spec(
        request,
        relic_id=relic_id,
        image=image,
        settings=rt.settings,
        expires_at=expires,
        network=network,
        volume_names=volume_names,
    )


def _check(rt: Runtime, request: RelicStartRequest) -> None:
    """Reject a request that breaks server policy, before anything is touched."""
    check_limits(request.resource_limits, rt.settings)
    check_volumes(request.volumes, rt.settings)
    check_network(request, rt.settings)
    check_request_size(request, rt.settings)
    check_build_request(request.build, rt.settings)
    maximum = rt.settings.relic_max_health_timeout_seconds
    if request.health_timeout_seconds > maximum:
        raise LimitExceeded(
            f"health_timeout_seconds: {request.health_timeout_seconds:g} is above the server "
            f"maximum {maximum} ({env_name('relic_max_health_timeout_seconds')})"
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
        QuotaExceeded: the session or the host holds too much, or the host is starting too
            many relics at once; nothing started.
        RelicConflict: a different relic of this session has the same name.
        RelicExited / RelicUnhealthy: it never became healthy; nothing is left behind.
    """
    _check(rt, request)
    sessions.require_owner(rt, request.session_id)  # a start forwarded elsewhere holds nothing
    with _quota(rt, request, relic_id):
        return _start_relic(rt, request, relic_id)


#: Added to a relic's health timeout in its start's quota entries: time to pull or build.
QUOTA_START_SECONDS = 900


@contextmanager
def _quota(rt: Runtime, request: RelicStartRequest, relic_id: str) -> Iterator[None]:
    """One of the host's relic-start slots while it starts, and the relic's place in its
    session's and host's quotas: released if the start fails, kept once it is healthy until
    it is removed or its session ends (its hard end, if no worker is left to say so)."""
    quotas = Quotas(rt.redis, rt.settings)
    starting = time.time() + request.health_timeout_seconds + QUOTA_START_SECONDS
    memory_mb = request.resource_limits.memory_mb
    with quotas.relic_start(relic_id, starting):
        quotas.acquire(
            relic_id,
            session_id=request.session_id,
            kind="relic",
            memory_mb=memory_mb,
            expires_at=starting,
        )
        try:
            yield
        except BaseException:
            quotas.release(relic_id, request.session_id)
            raise
        created = sessions.expiry(rt.redis, request.session_id).get("created_at", time.time())
        quotas.acquire(
            relic_id,
            session_id=request.session_id,
            kind="relic",
            memory_mb=memory_mb,
            expires_at=created + rt.settings.session_max_lifetime_seconds,
            enforce=False,
        )


def _start_relic(rt: Runtime, request: RelicStartRequest, relic_id: str) -> RelicInfo:
    """:func:`start_relic` once the request passed its checks and holds its quotas."""
    sessions.record_host(rt, request.session_id)
    container = _existing(
        rt, relic_container_name(request.session_id, request.relic_name), relic_id
    )
    if container is None:
        container = _existing_by_labels(rt, request, relic_id)
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
    name = container.name
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
        # Binds are mounted at start: check them once more, as late as possible.
        volumes.recheck_binds(rt, request.volumes)
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
        request: the validated request; its secret values encrypted (or plain, from a
            plain Celery client). :func:`start_relic` is given them decrypted.
        relic_id: the relic's id (the start task's id).

    Returns:
        The healthy relic.

    Raises:
        StartInProgress: another worker holds this start's lease.
        InvalidRequest / Forbidden: a secret value does not decrypt with this worker's key.
        RelicError: sent again by the reaper (secrets masked) with no container left.
    """
    # Decrypted here, in memory only: its checks, its container's environment and the
    # masking of its errors need the values; the registry gets request.redacted().
    revealed = secrets.reveal_request(request, secrets.settings_keyring(rt.settings))
    if not rt.leases.acquire(relic_id):
        raise StartInProgress(f"relic {relic_id} is being started by another worker")
    try:
        resumed = _resumed_without_secrets(rt, request, relic_id)
        rt.executions.start(
            relic_id,
            {
                "task": Task.RELICS_START.value,
                "host": rt.host_name,
                "session_id": request.session_id,
                "request": request.redacted(),  # what the reaper re-sends: never a secret
                "has_secrets": "1" if request.secret_parameters else "",
            },
        )
        try:
            with _masking(revealed):
                if resumed and not _alive(rt, request, relic_id):
                    raise RelicError(
                        f"relic {relic_id}: its worker died before the container was made and "
                        "secret parameters are never stored; start the relic again"
                    )
                return start_relic(rt, revealed, relic_id)
        finally:
            rt.executions.forget(relic_id)
    finally:
        rt.leases.release(relic_id)


def _resumed_without_secrets(rt: Runtime, request: RelicStartRequest, relic_id: str) -> bool:
    """True for a start the reaper sent again from the registry: its secrets are masks.

    (A Celery retry has a registry entry too, but its request holds the real values.)
    """
    params = request.secret_parameters
    if not params or any(value != redaction.MASK for value in params.values()):
        return False
    return rt.executions.get(relic_id).has_secrets


def _alive(rt: Runtime, request: RelicStartRequest, relic_id: str) -> bool:
    """Whether this relic's container exists and has not finished (looked up, not touched)."""
    found = rt.engine.find_container(relic_container_name(request.session_id, request.relic_name))
    if found is None:
        by_labels = rt.engine.list_containers(
            label_filter(kind=Kind.RELIC.value, session=request.session_id, relic=relic_id)
        )
        found = by_labels[0] if by_labels else None
    return found is not None and found.labels.get(label("relic")) == relic_id and not found.finished


@contextmanager
def _masking(request: RelicStartRequest) -> Iterator[None]:
    """An error leaving a start with secrets shows none of them: a relic that exits or never
    turns healthy has its log tail in the message, which Celery stores."""
    try:
        yield
    except Exception as exc:
        if request.secret_parameters:
            forms = redaction.secret_forms(redaction.secret_values(request))
            redaction.redact_exception(exc, forms)
        raise


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


def _existing_by_labels(rt: Runtime, request: RelicStartRequest, relic_id: str) -> Container | None:
    """The session's relic of this name under another container name (one started before
    the naming changed), found by its labels; None when there is none.

    Raises:
        RelicConflict: it belongs to another relic.
    """
    found = rt.engine.list_containers(
        label_filter(
            kind=Kind.RELIC.value, session=request.session_id, relic_name=request.relic_name
        )
    )
    return _existing(rt, found[0].name, relic_id) if found else None


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
            if path == NO_HEALTH_CHECK:
                healthy = True  # a workspace relic is healthy while it runs
            else:
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
    container = rt.engine.find_container(entry.container_name)
    if container is None:
        return RelicInfo(
            relic_id=relic_id,
            relic_name=entry.relic_name,
            session_id=entry.session_id,
            container_name=entry.container_name,
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
    container = rt.engine.find_container(entry.container_name)
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
    removed = rt.engine.remove_container(entry.container_name)
    _unregister(rt.redis, relic_id, entry.session_id)
    Quotas(rt.redis, rt.settings).release(relic_id, entry.session_id)
    return {"relic_id": relic_id, "removed": removed}
