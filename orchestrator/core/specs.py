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
import stat
from collections.abc import Mapping
from typing import Any

from orchestrator.core.agent import AGENT_ENTRYPOINT
from orchestrator.core.secrets import is_encrypted
from orchestrator.core.types import ContainerSpec, Mount
from orchestrator.errors import Forbidden, InvalidRequest, LimitExceeded
from orchestrator.models import (
    PoolSpec,
    RelicStartRequest,
    ResourceLimits,
    ToolExecutionRequest,
    VolumeMount,
)
from orchestrator.protocol import LABEL_PREFIX, Kind, tool_container_name
from orchestrator.settings import Settings, env_name

__all__ = [
    "LABEL_PREFIX",
    "check_limits",
    "check_volumes",
    "check_network",
    "check_request_size",
    "request_bytes",
    "check_bind",
    "bind_source",
    "path_within",
    "tool_container_name",
    "session_scoped_name",
    "relic_container_name",
    "pool_container_name",
    "volume_name",
    "legacy_volume_name",
    "tool_environment",
    "secret_environment",
    "labels",
    "sandbox",
    "mounts",
    "tool_spec",
    "relic_spec",
    "pool_spec",
]

FORBIDDEN_BIND_SOURCES = ("/var/run/docker.sock", "/run/docker.sock")


def check_limits(limits: ResourceLimits, settings: Settings) -> ResourceLimits:
    """Reject limits above the server maxima; fill in the default pids limit.

    Raises:
        LimitExceeded: the message names the field and the maximum.
    """
    caps = {
        "memory_mb": "max_memory_mb",
        "cpu_limit": "max_cpu_limit",
        "timeout_seconds": "max_timeout_seconds",
        "pids_limit": "max_pids_limit",
    }
    for field, setting in caps.items():
        value, maximum = getattr(limits, field), getattr(settings, setting)
        if value is not None and value > maximum:
            raise LimitExceeded(
                f"resource_limits.{field}: {value} is above the server maximum {maximum} "
                f"({env_name(setting)})"
            )
    if limits.pids_limit is None:
        return limits.model_copy(update={"pids_limit": settings.default_pids_limit})
    return limits


def check_volumes(volumes: list[VolumeMount], settings: Settings) -> None:
    """Allow bind mounts only under the configured roots (see :func:`check_bind`).

    Named volumes pass: they always mean the session's own volume (see :func:`mounts`).
    The worker calls this when a request arrives and again right before it creates and
    starts the container, so a path changed during a pull or build is caught.

    Raises:
        Forbidden: a bind mount breaks a rule; the message names ``volumes.<i>.source``.
    """
    roots = [os.path.realpath(root) for root in settings.allowed_volume_roots]
    for index, mount in enumerate(volumes):
        if mount.is_bind:
            check_bind(f"volumes.{index}.source", mount.source, roots)


def bind_source(source: str) -> str:
    """The absolute, normalized form of a bind source (``..``, ``.`` and ``//`` folded).

    The engine is given this form: with no symlink on the path (see :func:`check_bind`),
    folding ``..`` by text is what the kernel would do.
    """
    return "/" + os.path.normpath(source).lstrip("/")


def check_bind(field: str, source: str, roots: list[str]) -> str:
    """Check one bind source against the rules, in the worker's view of the filesystem.

    The rules: never the Docker socket, a directory holding it, or any socket; only under
    one of ``roots``; the path must exist (the engine is never asked to create it); and no
    component of it may be a symbolic link, so the path the engine mounts is the path that
    was checked.

    Args:
        field: the request field, first in every message.
        source: the requested host path.
        roots: the allowed roots, already resolved (``os.path.realpath``).

    Returns:
        The normalized source (:func:`bind_source`).

    Raises:
        Forbidden: naming ``field``, the rule and ``ORCHESTRATOR_ALLOWED_VOLUME_ROOTS``.
    """
    path = bind_source(source)
    real = os.path.realpath(path)
    if _is_docker_socket(path, real):
        raise Forbidden(
            f"{field}: mounting the Docker socket is never allowed (nor a directory that "
            "holds it, nor any other socket), whatever ORCHESTRATOR_ALLOWED_VOLUME_ROOTS says"
        )
    if not roots:
        raise Forbidden(
            f"{field}: bind mounts are disabled; ORCHESTRATOR_ALLOWED_VOLUME_ROOTS lists the "
            "host directories they may come from"
        )
    if not any(path_within(real, root) for root in roots):
        raise Forbidden(
            f"{field}: {source!r} resolves to {real!r}, outside the allowed roots "
            "(ORCHESTRATOR_ALLOWED_VOLUME_ROOTS)"
        )
    _no_symlink_on(field, path)
    return path


def _is_docker_socket(path: str, real: str) -> bool:
    """True for a known Docker socket path or a directory above one, or any socket."""
    known = {*FORBIDDEN_BIND_SOURCES, *map(os.path.realpath, FORBIDDEN_BIND_SOURCES)}
    if any(path_within(sock, candidate) for sock in known for candidate in (path, real)):
        return True
    try:
        return stat.S_ISSOCK(os.stat(real).st_mode)
    except OSError:  # missing: refused later, naming the part that is missing
        return False


def _no_symlink_on(field: str, path: str) -> None:
    """Refuse a path with a missing or symlinked component (``lstat`` of each, from ``/``).

    A symlink anywhere could be pointed elsewhere between this check and the mount; a
    missing path would be one the worker cannot vouch for (a worker in a container that
    does not see the host path at the same place).
    """
    current = ""
    for part in [p for p in path.split("/") if p]:
        current = f"{current}/{part}"
        try:
            mode = os.lstat(current).st_mode
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError | NotADirectoryError)
            state = "does not exist" if missing else f"cannot be examined ({exc.strerror})"
            raise Forbidden(
                f"{field}: {current!r} {state} where the worker looks; a bind source is "
                "never created, and the worker must see each of "
                "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS at the same path as the Docker host"
            ) from None
        if stat.S_ISLNK(mode):
            raise Forbidden(
                f"{field}: {current!r} is a symbolic link; no part of a bind source may be "
                "one (ORCHESTRATOR_ALLOWED_VOLUME_ROOTS is checked on real paths)"
            )


# -- network, published ports, request size (containment) ----------------------------------

NETWORK_MODES_SETTING = "ORCHESTRATOR_ALLOWED_NETWORK_MODES"
#: Why the default bridge is refused: what a container on it reaches.
BRIDGE_REACHES = (
    "the default bridge reaches the internet, cloud metadata (169.254.169.254), the host's "
    "services and every container on that bridge"
)


def check_network(request: ToolExecutionRequest | RelicStartRequest, settings: Settings) -> None:
    """Allow only the operator's network modes, and relic ports within the operator's range.

    A tool's ``network_mode`` must be in ``settings.allowed_network_modes``; a relic with
    ``create_private_network=false`` lands on the default bridge, so it needs ``bridge``
    there too. Published relic ports: at most ``relic_max_ports``, host ports only within
    ``relic_host_port_range`` (never a privileged port).

    Raises:
        Forbidden: naming the field, the rule and the setting that would allow it.
        LimitExceeded: more published ports than ``relic_max_ports``.
    """
    allowed = settings.allowed_network_modes
    if isinstance(request, ToolExecutionRequest):
        if request.network_mode not in allowed:
            reason = f"; {BRIDGE_REACHES}" if request.network_mode == "bridge" else ""
            raise Forbidden(
                f"network_mode: {request.network_mode!r} is not allowed (allowed: "
                f"{', '.join(allowed) or 'nothing'}){reason}; an operator allows it with "
                f"{NETWORK_MODES_SETTING}"
            )
        return
    if not request.create_private_network and "bridge" not in allowed:
        raise Forbidden(
            "create_private_network: false puts the relic on the default bridge, which is not "
            f"allowed: {BRIDGE_REACHES}; use the session network, or an operator adds bridge "
            f"to {NETWORK_MODES_SETTING}"
        )
    _check_ports(request.ports or {}, settings)


def _check_ports(ports: Mapping[int, int], settings: Settings) -> None:
    if len(ports) > settings.relic_max_ports:
        raise LimitExceeded(
            f"ports: {len(ports)} published ports, above the server maximum "
            f"{settings.relic_max_ports} per relic (ORCHESTRATOR_RELIC_MAX_PORTS)"
        )
    allowed = settings.relic_host_ports
    for container_port, host_port in ports.items():
        field = f"ports.{container_port}"
        if host_port < 1024:
            raise Forbidden(
                f"{field}: host port {host_port} is privileged (below 1024): never published, "
                "whatever ORCHESTRATOR_RELIC_HOST_PORT_RANGE says"
            )
        if host_port not in allowed:
            raise Forbidden(
                f"{field}: host port {host_port} is outside the allowed range "
                f"{settings.relic_host_port_range}; an operator widens it with "
                "ORCHESTRATOR_RELIC_HOST_PORT_RANGE"
            )


def _command_bytes(command: str | list[str] | None) -> int:
    if command is None:
        return 0
    parts = [command] if isinstance(command, str) else command
    return sum(len(part.encode()) + 1 for part in parts)


def request_bytes(request: ToolExecutionRequest | RelicStartRequest) -> int:
    """What a request puts in its container's ``execve``: the ``NAME=value`` entries of its
    environment (parameters JSON-encoded, as the container gets them) and its command."""
    if isinstance(request, ToolExecutionRequest):
        env: Mapping[str, str] = tool_environment(request)
    else:
        env = {**secret_environment(request.secret_parameters), **request.environment}
    size = sum(len(name.encode()) + len(value.encode()) + 2 for name, value in env.items())
    return size + _command_bytes(request.command)


def check_request_size(
    request: ToolExecutionRequest | RelicStartRequest, settings: Settings
) -> None:
    """Refuse a request whose environment and command together exceed the server maximum.

    Raises:
        LimitExceeded: naming the fields, the size and ``ORCHESTRATOR_MAX_REQUEST_BYTES``.
    """
    size = request_bytes(request)
    if size > settings.max_request_bytes:
        fields = (
            "environment + parameters + secret_parameters + command"
            if isinstance(request, ToolExecutionRequest)
            else "environment + secret_parameters + command"
        )
        raise LimitExceeded(
            f"{fields}: {size} bytes in all, above the server maximum "
            f"{settings.max_request_bytes} (ORCHESTRATOR_MAX_REQUEST_BYTES)"
        )


def path_within(path: str, directory: str) -> bool:
    """True when ``path`` is ``directory`` or lies under it (both already resolved)."""
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def session_scoped_name(prefix: str, session_id: str, name: str) -> str:
    """``<prefix><len(session_id)>-<session_id>-<name>``: one engine name per pair.

    Ids may hold ``-`` (any character of Docker's name alphabet), so no separator can tell
    where the session ends; its length does, so two different pairs never share a name.
    """
    return f"{prefix}{len(session_id)}-{session_id}-{name}"


def relic_container_name(session_id: str, relic_name: str) -> str:
    """The relic's container name: unique per session and relic name."""
    return session_scoped_name("orch-relic-", session_id, relic_name)


def volume_name(session_id: str, name: str) -> str:
    """The engine-side name of a session's named volume."""
    return session_scoped_name("orch-vol-", session_id, name)


def legacy_volume_name(session_id: str, name: str) -> str:
    """The name relic volumes had before session-scoped names were made unambiguous; the
    worker uses such a volume only when its labels say it is this session's."""
    return f"orch-{session_id}-{name}"


def pool_container_name(pool_key: str, suffix: str) -> str:
    """The name of one warm-pool container."""
    return f"orch-pool-{pool_key}-{suffix}"


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def secret_environment(params: Mapping[str, Any]) -> dict[str, str]:
    """Decrypted secret parameters as environment values (non-strings JSON-encoded).

    Raises:
        InvalidRequest: a value is still in its encrypted wire form: the worker decrypts
            (:func:`orchestrator.core.secrets.reveal`) before it builds a spec.
    """
    for name, value in params.items():
        if is_encrypted(value):
            raise InvalidRequest(f"secret_parameters.{name}: still encrypted; decrypt it first")
    return {name: _env_value(value) for name, value in params.items()}


def tool_environment(request: ToolExecutionRequest) -> dict[str, str]:
    """Parameters (non-strings JSON-encoded), secret parameters, then plain environment."""
    env = {name: _env_value(v) for name, v in request.parameters.items()}
    env.update(secret_environment(request.secret_parameters))
    env.update(request.environment)
    for name, value in env.items():
        if "\x00" in value:
            raise InvalidRequest(f"parameters.{name}: value contains NUL")
    return env


#: Labels that only some objects carry: set empty on the others (see :func:`labels`).
INHERITABLE_LABELS = ("keep", "execution", "relic", "relic_name", "tool", "pool", "port")


def labels(kind: str, session_id: str, deadline: float, host: str, **extra: str) -> dict[str, str]:
    """The labels every managed object carries; cleanup, listing and the janitor select by
    them, never by name.

    Every label the orchestrator reads is set, empty when it does not apply: a container
    inherits its image's labels, and an image (which a request chooses) must not be able to
    mark its containers ``keep`` or give them an owner.
    """
    base = {
        **{key: "" for key in INHERITABLE_LABELS},
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
        # gVisor, Kata...: an operator's answer to kernel escapes (None: the engine's default).
        "runtime": settings.container_runtime,
    }
    if settings.read_only_root:
        fields["read_only"] = True
        fields["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={settings.tmpfs_size_mb}m"}
    return fields


def mounts(
    volumes: list[VolumeMount], volume_names: Mapping[str, str] | None = None
) -> tuple[Mount, ...]:
    """Engine mounts: binds for host paths (normalized); named volumes mapped through
    ``volume_names`` (a request's volume name -> the session volume's engine name).

    Raises:
        Forbidden: a named volume has no session volume in ``volume_names``; a request's
            name never reaches the engine as it is.
    """
    names = volume_names or {}
    made = []
    for index, m in enumerate(volumes):
        if m.is_bind:
            source = bind_source(m.source)
        elif m.source in names:
            source = names[m.source]
        else:
            raise Forbidden(
                f"volumes.{index}.source: {m.source!r} has no session volume; a named volume "
                "is always the session's own, made by the worker"
            )
        made.append(
            Mount(
                source=source,
                target=m.target,
                read_only=m.read_only,
                kind="bind" if m.is_bind else "volume",
            )
        )
    return tuple(made)


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
    volume_names: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The container of a tool run.

    Args:
        request: the validated request.
        execution_id: names and labels the container.
        image: the resolved image (pulled or built).
        settings: server caps and defaults.
        now: unix time, for the deadline label.
        network: the session network name when ``network_mode == "session"``.
        volume_names: the request's named volumes -> their session-scoped engine names.

    Raises:
        LimitExceeded / InvalidRequest: the request breaks server policy.
    """
    limits = check_limits(request.resource_limits, settings)
    check_volumes(request.volumes, settings)
    check_network(request, settings)
    check_request_size(request, settings)
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
        mounts=mounts(request.volumes, volume_names),
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
    check_network(request, settings)
    check_request_size(request, settings)
    return ContainerSpec(
        name=relic_container_name(request.session_id, request.relic_name),
        image=image,
        command=_command(request.command),
        environment={**secret_environment(request.secret_parameters), **request.environment},
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
        # Published on one address (loopback by default), never on every interface.
        ports_host_ip=settings.relic_ports_host_ip if request.ports else "",
        **sandbox(settings, limits, cap_add=tuple(settings.relic_cap_add)),
    )


def pool_spec(pool: PoolSpec, *, settings: Settings, now: float, suffix: str) -> ContainerSpec:
    """An idle warm-pool container: no network, its agent waiting on its open standard
    input for the one tool run it is given (:mod:`orchestrator.core.agent`)."""
    return ContainerSpec(
        name=pool_container_name(pool.key, suffix),
        image=pool.image,
        entrypoint=AGENT_ENTRYPOINT,
        command=(),
        stdin_open=True,
        labels=labels(Kind.POOL, "", now + pool.max_age_seconds, settings.host_name, pool=pool.key),
        network="none",
        **sandbox(settings, pool.limits(settings.default_pids_limit)),
    )
