"""The one place where every container the orchestrator creates is decided (pure).

Nothing here talks to Docker or Redis. Each builder turns a validated request plus the
server's Settings into an :class:`~orchestrator.core.types.ContainerSpec`: names,
labels, limits and sandbox options (no capabilities, no privilege gain, pids limit,
read-only root when configured). Server-side policy is enforced here, so it is tested
without an engine: tool runs (:func:`tool_spec`), relics (:func:`relic_spec`) and
warm-pool containers (:func:`pool_spec`) all pass through :func:`sandbox`.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from typing import Any

from orchestrator.core.types import ContainerSpec, Mount
from orchestrator.errors import InvalidRequest, LimitExceeded
from orchestrator.models import (
    PoolSpec,
    RelicStartRequest,
    ResourceLimits,
    ToolExecutionRequest,
    VolumeMount,
)
from orchestrator.protocol import LABEL_PREFIX, Kind, tool_container_name
from orchestrator.settings import Settings

__all__ = [
    "LABEL_PREFIX",
    "IDLE_SCRIPT",
    "check_limits",
    "check_volumes",
    "path_within",
    "tool_container_name",
    "relic_container_name",
    "pool_container_name",
    "volume_name",
    "tool_environment",
    "labels",
    "sandbox",
    "mounts",
    "tool_spec",
    "relic_spec",
    "pool_spec",
]

FORBIDDEN_BIND_SOURCES = ("/var/run/docker.sock", "/run/docker.sock")
#: What an idle warm-pool container runs: nothing, until it is told to stop.
IDLE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


def check_limits(limits: ResourceLimits, settings: Settings) -> ResourceLimits:
    """Reject limits above the server maxima; fill in the default pids limit.

    Raises:
        LimitExceeded: the message names the field and the maximum.
    """
    caps = {
        "memory_mb": settings.max_memory_mb,
        "cpu_limit": settings.max_cpu_limit,
        "timeout_seconds": settings.max_timeout_seconds,
        "pids_limit": settings.max_pids_limit,
    }
    for field, maximum in caps.items():
        value = getattr(limits, field)
        if value is not None and value > maximum:
            raise LimitExceeded(
                f"resource_limits.{field}: {value} is above the server maximum {maximum}"
            )
    if limits.pids_limit is None:
        return limits.model_copy(update={"pids_limit": settings.default_pids_limit})
    return limits


def check_volumes(volumes: list[VolumeMount], settings: Settings) -> None:
    """Allow bind mounts only under the configured roots, after resolving symlinks and ``..``.

    Raises:
        InvalidRequest: a mount is outside the allowed roots or targets the Docker socket.
    """
    roots = [os.path.realpath(root) for root in settings.allowed_volume_roots]
    for index, mount in enumerate(volumes):
        if not mount.is_bind:
            continue
        field = f"volumes.{index}.source"
        real = os.path.realpath(mount.source)
        if any(
            path_within(sock, real) or path_within(sock, mount.source)
            for sock in FORBIDDEN_BIND_SOURCES
        ):
            raise InvalidRequest(f"{field}: mounting the Docker socket is never allowed")
        if not roots:
            raise InvalidRequest(
                f"{field}: bind mounts are disabled (no ORCHESTRATOR_ALLOWED_VOLUME_ROOTS)"
            )
        if not any(path_within(real, root) for root in roots):
            raise InvalidRequest(
                f"{field}: {mount.source!r} resolves to {real!r}, outside the allowed roots"
            )


def path_within(path: str, directory: str) -> bool:
    """True when ``path`` is ``directory`` or lies under it (both already resolved)."""
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def relic_container_name(session_id: str, relic_name: str) -> str:
    """The relic's container name: unique per session and relic name."""
    return f"orch-relic-{session_id}-{relic_name}"


def volume_name(session_id: str, name: str) -> str:
    """The engine-side name of a session's named volume."""
    return f"orch-{session_id}-{name}"


def pool_container_name(pool_key: str, suffix: str) -> str:
    """The name of one warm-pool container."""
    return f"orch-pool-{pool_key}-{suffix}"


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def tool_environment(request: ToolExecutionRequest) -> dict[str, str]:
    """Parameters (non-strings JSON-encoded), secret parameters, then plain environment."""
    env = {name: _env_value(v) for name, v in request.parameters.items()}
    env.update({name: _env_value(v) for name, v in request.secret_parameters.items()})
    env.update(request.environment)
    for name, value in env.items():
        if "\x00" in value:
            raise InvalidRequest(f"parameters.{name}: value contains NUL")
    return env


def labels(kind: str, session_id: str, deadline: float, host: str, **extra: str) -> dict[str, str]:
    """The labels every managed object carries; cleanup, listing and the janitor select by
    them, never by name."""
    base = {
        "managed": "true",
        "kind": kind,
        "session": session_id,
        "deadline": str(int(deadline)),
        "host": host,
        **extra,
    }
    return {LABEL_PREFIX + key: value for key, value in base.items()}


def sandbox(
    settings: Settings, limits: ResourceLimits, cap_add: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The ContainerSpec fields every container shares: limits and the sandbox.

    Memory and swap are equal (no swap), all capabilities dropped unless ``cap_add``
    (operator settings only), ``no-new-privileges``, a capped json-file log, and a
    read-only root with a small ``/tmp`` tmpfs when the operator asks for it.
    """
    fields: dict[str, Any] = {
        "memory_mb": limits.memory_mb,
        "cpu_limit": limits.cpu_limit,
        "pids_limit": limits.pids_limit,
        "cap_drop": ("ALL",),
        "cap_add": tuple(cap_add),
        "security_opt": ("no-new-privileges:true",),
        "log_max_size": settings.container_log_max_size,
    }
    if settings.read_only_root:
        fields["read_only"] = True
        fields["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={settings.tmpfs_size_mb}m"}
    return fields


def mounts(
    volumes: list[VolumeMount], volume_names: Mapping[str, str] | None = None
) -> tuple[Mount, ...]:
    """Engine mounts: binds for host paths; named volumes mapped through ``volume_names``
    (a request's volume name -> the engine-side name), as given when not mapped."""
    names = volume_names or {}
    return tuple(
        Mount(
            source=m.source if m.is_bind else names.get(m.source, m.source),
            target=m.target,
            read_only=m.read_only,
            kind="bind" if m.is_bind else "volume",
        )
        for m in volumes
    )


def _command(command: str | list[str] | None) -> tuple[str, ...] | None:
    if command is None:
        return None
    return tuple(shlex.split(command)) if isinstance(command, str) else tuple(command)


def tool_spec(
    request: ToolExecutionRequest,
    *,
    execution_id: str,
    image: str,
    settings: Settings,
    now: float,
    network: str | None = None,
) -> ContainerSpec:
    """The container of a tool run.

    Args:
        request: the validated request.
        execution_id: names and labels the container.
        image: the resolved image (pulled or built).
        settings: server caps and defaults.
        now: unix time, for the deadline label.
        network: the session network name when ``network_mode == "session"``.

    Raises:
        LimitExceeded / InvalidRequest: the request breaks server policy.
    """
    limits = check_limits(request.resource_limits, settings)
    check_volumes(request.volumes, settings)
    if request.network_mode == "session":
        if not network:
            raise InvalidRequest("network_mode: 'session' needs the session network")
        network_mode = network
    else:
        network_mode = request.network_mode
    deadline = now + limits.timeout_seconds + settings.grace_seconds
    extra = {"execution": execution_id, "tool": request.tool_name}
    if not request.cleanup:  # kept on purpose: the janitor leaves it until the results expire
        deadline += settings.result_ttl_seconds
        extra["keep"] = "true"
    return ContainerSpec(
        name=tool_container_name(execution_id),
        image=image,
        command=_command(request.command),
        environment=tool_environment(request),
        labels=labels(Kind.TOOL, request.session_id, deadline, settings.host_name, **extra),
        network=network_mode,
        mounts=mounts(request.volumes),
        **sandbox(settings, limits),
    )


def relic_spec(
    request: RelicStartRequest,
    *,
    relic_id: str,
    image: str,
    settings: Settings,
    expires_at: float,
    network: str | None,
    volume_names: Mapping[str, str],
) -> ContainerSpec:
    """The container of a relic.

    Args:
        request: the validated request.
        relic_id: labels the container.
        image: the resolved image (pulled or built).
        settings: server caps and defaults.
        expires_at: the session's expiry (unix time), the container's deadline label.
        network: the session network, or None to use the default bridge.
        volume_names: the request's named volumes -> their session-scoped engine names.

    Raises:
        LimitExceeded / InvalidRequest: the request breaks server policy.
    """
    limits = check_limits(request.resource_limits, settings)
    check_volumes(request.volumes, settings)
    return ContainerSpec(
        name=relic_container_name(request.session_id, request.relic_name),
        image=image,
        command=_command(request.command),
        environment=dict(request.environment),
        labels=labels(
            Kind.RELIC,
            request.session_id,
            expires_at,
            settings.host_name,
            relic=relic_id,
            relic_name=request.relic_name,
            port=str(request.port),
        ),
        network=network or "bridge",
        aliases=(request.relic_name,) if network else (),
        mounts=mounts(request.volumes, volume_names),
        ports=dict(request.ports or {}),
        **sandbox(settings, limits, cap_add=tuple(settings.relic_cap_add)),
    )


def pool_spec(pool: PoolSpec, *, settings: Settings, now: float, suffix: str) -> ContainerSpec:
    """An idle warm-pool container: no network, waiting to be given a tool run by exec."""
    return ContainerSpec(
        name=pool_container_name(pool.key, suffix),
        image=pool.image,
        entrypoint=("sh", "-c", IDLE_SCRIPT),
        command=(),
        labels=labels(Kind.POOL, "", now + pool.max_age_seconds, settings.host_name, pool=pool.key),
        network="none",
        **sandbox(settings, pool.limits(settings.default_pids_limit)),
    )
