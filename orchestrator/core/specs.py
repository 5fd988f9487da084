"""Pure translation of requests into docker-py container arguments.

Nothing here talks to Docker or Redis: :func:`tool_container_config` turns a
validated request plus the server's Settings into the keyword arguments of
``client.containers.create``. Server-side policy (caps, allowed roots, sandbox
defaults) is enforced here so it is tested without an engine.
"""

from __future__ import annotations

import json
import os
from typing import Any

from orchestrator.errors import InvalidRequest, LimitExceeded
from orchestrator.models import ResourceLimits, ToolExecutionRequest, VolumeMount
from orchestrator.settings import Settings

__all__ = [
    "LABEL_PREFIX",
    "check_limits",
    "check_volumes",
    "path_within",
    "tool_container_name",
    "tool_environment",
    "tool_container_config",
    "sandbox_options",
    "limit_options",
    "labels",
]

LABEL_PREFIX = "orchestrator."
FORBIDDEN_BIND_SOURCES = ("/var/run/docker.sock", "/run/docker.sock")


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


def tool_container_name(execution_id: str) -> str:
    """The container name of an execution: deterministic, so a redelivery finds it."""
    return f"orch-tool-{execution_id}"


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
    """The labels every managed container carries (ARCHITECTURE rule 6)."""
    base = {
        "managed": "true",
        "kind": kind,
        "session": session_id,
        "deadline": str(int(deadline)),
        "host": host,
        **extra,
    }
    return {LABEL_PREFIX + key: value for key, value in base.items()}


def limit_options(limits: ResourceLimits) -> dict[str, Any]:
    """Memory (swap equal to memory, so no swap), CPU as nano_cpus, pids."""
    memory = f"{limits.memory_mb}m"
    return {
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(round(limits.cpu_limit * 1_000_000_000)),
        "pids_limit": limits.pids_limit,
    }


def sandbox_options(settings: Settings, cap_add: list[str] | None = None) -> dict[str, Any]:
    """Safe defaults shared by tools and relics: no capabilities, no privilege gain."""
    options: dict[str, Any] = {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "log_config": {
            "type": "json-file",
            "config": {"max-size": settings.container_log_max_size, "max-file": "1"},
        },
    }
    if cap_add:
        options["cap_add"] = list(cap_add)
    if settings.read_only_root:
        options["read_only"] = True
        options["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={settings.tmpfs_size_mb}m"}
    return options


def volume_options(volumes: list[VolumeMount]) -> dict[str, dict[str, str]]:
    """docker-py's ``volumes`` mapping: source -> {bind, mode}."""
    return {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in volumes}


def tool_container_config(
    request: ToolExecutionRequest,
    *,
    execution_id: str,
    image: str,
    settings: Settings,
    now: float,
    network: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` of a tool run.

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
    return {
        "image": image,
        "command": request.command,
        "name": tool_container_name(execution_id),
        "environment": tool_environment(request),
        "labels": labels("tool", request.session_id, deadline, settings.host_name, **extra),
        "network_mode": network_mode,
        "volumes": volume_options(request.volumes),
        "detach": True,
        **limit_options(limits),
        **sandbox_options(settings),
    }
