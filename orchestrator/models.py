"""Pydantic models: the wire format of every task's argument and result.

Requests are strict (unknown fields are refused, so ``privileged`` or ``cap_add``
cannot sneak in) and validated field by field; :func:`parse_request` turns a
pydantic ``ValidationError`` into :class:`~orchestrator.errors.InvalidRequest`
whose message names each offending field, because a raw ``ValidationError``
loses its text in Celery's JSON result backend.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.core.agent import AGENT_PROTOCOL
from orchestrator.core.archive import check_path
from orchestrator.errors import InvalidRequest
from orchestrator.protocol import ID_MAX_LENGTH, ID_PATTERN, validate_id

__all__ = [
    "ResourceLimits",
    "FileContent",
    "FilesWritten",
    "FilesRead",
    "SkippedPath",
    "RelicResourceLimits",
    "BuildSpec",
    "VolumeMount",
    "ToolExecutionRequest",
    "ToolRunStats",
    "PoolSpec",
    "ToolExecutionResult",
    "ExecutionStatus",
    "FINAL_STATUSES",
    "RelicStartRequest",
    "RelicInfo",
    "RelicExecRequest",
    "ExecResult",
    "ContainerStats",
    "AggregateStats",
    "CleanupReport",
    "parse_request",
    "check_identifier",
]

# Docker's reference grammar, slightly simplified: [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{{1,5}})?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Session ids, tool and relic names: the one id rule of :func:`orchestrator.protocol.validate_id`.
Identifier = Annotated[
    str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH)
]
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=255)]
ContainerPath = Annotated[
    str, StringConstraints(pattern=r"^/[^\x00\n\r]*$", min_length=1, max_length=4096)
]

ExecutionStatus = Literal["succeeded", "failed", "timed_out", "cancelled", "oom_killed", "error"]
FINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "oom_killed", "error"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceLimits(_Strict):
    """Limits of one container; validated here, capped by the server's Settings."""

    memory_mb: int = Field(512, ge=6, strict=True, description="Memory (and swap) in MiB.")
    cpu_limit: float = Field(1.0, ge=0.01, description="CPU cores, applied as nano_cpus.")
    timeout_seconds: int = Field(300, gt=0, description="Wall-clock limit of a tool run.")
    pids_limit: int | None = Field(
        None, gt=0, description="Process limit; server default if unset."
    )


class RelicResourceLimits(ResourceLimits):
    """Limits of a relic: the same fields, with larger defaults (1024 MB, 2.0 cores)."""

    memory_mb: int = Field(1024, ge=6, strict=True, description="Memory (and swap) in MiB.")
    cpu_limit: float = Field(2.0, ge=0.01, description="CPU cores, applied as nano_cpus.")


class BuildSpec(_Strict):
    """Build an image instead of using one: a context directory on the worker, or inline text.

    Builds run only where the operator allows them (``ORCHESTRATOR_ALLOW_BUILDS``). The
    image is always tagged in the orchestrator's own namespace
    (``orchestrator-build/<name>:<hash of the whole build input>``): ``tag`` never names
    the image built, it is kept as its ``orchestrator.requested-tag`` label.
    """

    context: str | None = Field(None, max_length=4096, description="Directory on the worker.")
    dockerfile: str = Field(
        "Dockerfile",
        min_length=1,
        max_length=255,
        description="Relative path of the Dockerfile inside the context.",
    )
    dockerfile_inline: str | None = Field(None, min_length=1, max_length=65536)
    tag: ImageRef | None = Field(
        None, description="Kept as a label of the built image; never the image's tag."
    )
    buildargs: dict[str, Annotated[str, StringConstraints(max_length=65536)]] = Field(
        default_factory=dict, max_length=64
    )

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile_inside_context(cls, value: str) -> str:
        # Purely syntactic: the worker also resolves it (symlinks) against the context.
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain NUL or control characters")
        if value.startswith("/"):
            raise ValueError("must be a relative path inside the build context, not absolute")
        if ".." in value.split("/"):
            raise ValueError("must stay inside the build context: no '..' component")
        return value

    @field_validator("context")
    @classmethod
    def _context_shape(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValueError("must not contain NUL or control characters")
        return value

    @field_validator("buildargs")
    @classmethod
    def _buildarg_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)

    @model_validator(mode="after")
    def _one_source(self) -> BuildSpec:
        if not self.context and not self.dockerfile_inline:
            raise ValueError("give a context directory or dockerfile_inline")
        if self.context is not None and not self.context.startswith("/"):
            raise ValueError("context must be an absolute path on the worker")
        if self.tag is not None and not IMAGE_REFERENCE.fullmatch(self.tag):
            raise ValueError(f"tag {self.tag!r} is not a valid image reference")
        return self


class VolumeMount(_Strict):
    """A bind mount (absolute host path under an allowed root) or a named volume."""

    source: str = Field(min_length=1, max_length=4096)
    target: ContainerPath
    read_only: bool = False

    @field_validator("source")
    @classmethod
    def _source_shape(cls, value: str) -> str:
        if "\x00" in value or "\n" in value or "\r" in value:
            raise ValueError("must not contain NUL or newlines")
        if not value.startswith("/") and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", value):
            raise ValueError("must be an absolute host path or a volume name")
        return value

    @property
    def is_bind(self) -> bool:
        """True for a host path, False for a named volume."""
        return self.source.startswith("/")


def _check_image(value: str | None) -> str | None:
    if value is not None and not IMAGE_REFERENCE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid image reference")
    return value


def _check_env(mapping: dict[str, Any]) -> dict[str, Any]:
    for name, value in mapping.items():
        if not ENV_NAME.fullmatch(name) or len(name) > 255:
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"value of {name!r} contains NUL")
    return mapping


def _given_once(**fields: Iterable[str]) -> None:
    """Refuse a variable named in more than one field (``field name -> variable names``)."""
    first: dict[str, str] = {}
    clashes: list[str] = []
    for field, names in fields.items():
        for name in names:
            if name in first:
                clashes.append(f"{name} (in {first[name]} and {field})")
            else:
                first[name] = field
    if clashes:
        raise ValueError(f"variables given twice: {', '.join(sorted(clashes))}")


class _HasSecrets(BaseModel):
    """A request carrying ``secret_parameters``, shown with their values masked."""

    if TYPE_CHECKING:  # declared by each request, where it belongs in the field order
        secret_parameters: dict[str, Any]

    def redacted(self) -> dict[str, Any]:
        """The request as JSON with secret values replaced (safe to store or show)."""
        data = self.model_dump(mode="json")
        data["secret_parameters"] = {name: "***" for name in self.secret_parameters}
        return data


class FileContent(_Strict):
    """One file inside a container: its absolute path, bytes and mode.

    On the way in give ``content_base64`` or ``text`` (UTF-8), or neither for an empty
    file. On the way back ``content_base64`` holds the bytes (at most the server's cap:
    ``truncated`` says when the file was larger), ``size`` the file's real size, and a
    collected file too large to keep in a result has ``ref`` instead of content (see
    ``OrchestratorClient.get_collected_file``). Paths are checked further by the worker
    (:func:`orchestrator.core.archive.check_path`).
    """

    path: str = Field(max_length=4096, description="Absolute path inside the container.")
    content_base64: str | None = None
    text: str | None = None
    mode: int = Field(0o644, ge=0, le=0o7777, description="Permission bits (0o644).")
    size: int | None = Field(None, ge=0, description="The file's size (results only).")
    truncated: bool = False
    ref: str | None = Field(None, max_length=200, description="Stored apart (results only).")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            return check_path("path", value)
        except InvalidRequest as exc:
            raise ValueError(str(exc).removeprefix("path: ")) from exc

    @model_validator(mode="after")
    def _one_content(self) -> FileContent:
        if self.content_base64 is not None and self.text is not None:
            raise ValueError("give content_base64 or text, not both")
        return self

    def data(self) -> bytes:
        """The file's bytes (as far as they came: see ``truncated`` and ``ref``).

        Decoded here, not when validated: megabytes are decoded once, where used.

        Raises:
            InvalidRequest: ``content_base64`` is not valid base64.
        """
        if self.content_base64 is not None:
            try:
                return base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequest(f"{self.path}: content_base64 is not valid base64") from exc
        return (self.text or "").encode()

    @classmethod
    def of(cls, path: str, data: bytes | str, mode: int = 0o644, **fields: Any) -> FileContent:
        """A file from bytes (sent as base64) or text (sent as is)."""
        if isinstance(data, str):
            return cls(path=path, text=data, mode=mode, **fields)
        return cls(path=path, content_base64=base64.b64encode(data).decode(), mode=mode, **fields)


class SkippedPath(BaseModel):
    """A path ``get_files`` did not return, and why (a link, a device, over a cap...)."""

    path: str
    reason: str


class FilesWritten(BaseModel):
    """Result of ``orchestrator.relics.put_files``."""

    relic_id: str
    written: list[str] = Field(default_factory=list)
    bytes: int = 0


class FilesRead(BaseModel):
    """Result of ``orchestrator.relics.get_files``: files found, paths missing or skipped."""

    relic_id: str = ""
    files: list[FileContent] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    skipped: list[SkippedPath] = Field(default_factory=list)


class _ContainerRequest(_Strict):
    session_id: Identifier
    image: ImageRef | None = None
    build: BuildSpec | None = None
    command: list[Annotated[str, StringConstraints(max_length=65536)]] | str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    volumes: list[VolumeMount] = Field(default_factory=list, max_length=32)

    @field_validator("image")
    @classmethod
    def _image_ref(cls, value: str | None) -> str | None:
        return _check_image(value)

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)

    @model_validator(mode="after")
    def _image_or_build(self) -> Any:
        if (self.image is None) == (self.build is None):
            raise ValueError("give exactly one of image or build")
        if isinstance(self.command, str) and ("\x00" in self.command or not self.command.strip()):
            raise ValueError("command must be non-empty and contain no NUL")
        if isinstance(self.command, list) and any("\x00" in part for part in self.command):
            raise ValueError("command arguments must not contain NUL")
        return self


class ToolExecutionRequest(_ContainerRequest, _HasSecrets):
    """Run one tool in an ephemeral container (argument of ``orchestrator.tools.execute``)."""

    tool_name: Identifier
    parameters: dict[str, Any] = Field(default_factory=dict)
    secret_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Env vars never shown in results, logs or Flower."
    )
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    network_mode: Literal["none", "bridge", "session"] = "none"
    cleanup: bool = True
    files: list[FileContent] = Field(
        default_factory=list, description="Written into the container before it starts."
    )
    stdin: str | None = Field(None, description="Given to the tool's standard input.")
    collect: list[ContainerPath] = Field(
        default_factory=list, max_length=256, description="Read back after the tool exits."
    )

    @field_validator("parameters", "secret_parameters")
    @classmethod
    def _param_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_env(value)

    @model_validator(mode="after")
    def _no_overlap(self) -> ToolExecutionRequest:
        _given_once(
            parameters=self.parameters,
            secret_parameters=self.secret_parameters,
            environment=self.environment,
        )
        return self


class PoolSpec(BaseModel):
    """One pool: an image and the limits its containers are made with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(min_length=1)
    size: int = Field(2, ge=1, le=64, description="Idle containers kept per host.")
    memory_mb: int = Field(512, ge=6)
    cpu_limit: float = Field(1.0, ge=0.01)
    pids_limit: int | None = Field(None, ge=8)
    max_age_seconds: int = Field(3600, ge=60, description="Idle containers older are reaped.")

    @property
    def key(self) -> str:
        """A short stable id of the spec (image and limits, and the agent's protocol: a
        worker never takes a container made for another protocol)."""
        raw = f"{self.image}|{self.memory_mb}|{self.cpu_limit}|{self.pids_limit}|{AGENT_PROTOCOL}"
        return hashlib.sha256(raw.encode()).hexdigest()[:12]

    def limits(self, default_pids: int) -> ResourceLimits:
        """The resource limits of this pool's containers."""
        return ResourceLimits(
            memory_mb=self.memory_mb,
            cpu_limit=self.cpu_limit,
            pids_limit=self.pids_limit or default_pids,
        )

    def matches(self, request: ToolExecutionRequest, default_pids: int) -> bool:
        """True when a run of ``request`` may use a container of this pool (files, stdin
        and collect included)."""
        wanted = request.resource_limits
        return (
            request.image == self.image
            and request.build is None
            and request.network_mode == "none"
            and not request.volumes
            and wanted.memory_mb == self.memory_mb
            and wanted.cpu_limit == self.cpu_limit
            and (wanted.pids_limit or default_pids) == (self.pids_limit or default_pids)
        )


class ToolRunStats(BaseModel):
    """Resource usage of one tool run, sampled while it ran (None when unknown)."""

    peak_memory_mb: float | None = None
    cpu_seconds: float | None = None
    network_rx_mb: float | None = None
    network_tx_mb: float | None = None
    disk_read_mb: float | None = None
    disk_write_mb: float | None = None
    samples: int = 0


class _RunOutcome(BaseModel):
    """What a command run gives back, in a tool container or in a relic.

    Results list their own ids first: a result class names this base *first* and its ids'
    base after it (pydantic orders fields from the last base to the first).
    """

    status: ExecutionStatus
    exit_code: int | None = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None


class _ToolRunIds(BaseModel):
    execution_id: str
    tool_name: str
    session_id: str


class ToolExecutionResult(_RunOutcome, _ToolRunIds):
    """Outcome of a tool run (result of ``orchestrator.tools.execute``)."""

    stats: ToolRunStats = Field(default_factory=ToolRunStats)
    container_id: str | None = None
    host: str | None = None
    files: list[FileContent] = Field(default_factory=list, description="Collected files.")
    missing_files: list[str] = Field(default_factory=list, description="collect paths absent.")
    skipped_files: list[SkippedPath] = Field(default_factory=list)

    def collected(self, path: str) -> FileContent | None:
        """The collected file ``path`` (its bytes may be kept apart: see ``ref``)."""
        return next((item for item in self.files if item.path == path), None)


class RelicStartRequest(_ContainerRequest, _HasSecrets):
    """Start a session-scoped service container (argument of ``orchestrator.relics.start``)."""

    relic_name: Identifier
    port: int = Field(8000, ge=1, le=65535)
    ports: dict[int, int] | None = Field(None, description="container port -> host port")
    health_check_endpoint: str | None = Field(
        "/health",
        max_length=2048,
        description="GET path answered below 400 once ready; null: ready once its process "
        "runs (a workspace relic).",
    )
    health_timeout_seconds: float = Field(60.0, gt=0)
    create_private_network: bool = True
    resource_limits: RelicResourceLimits = Field(default_factory=RelicResourceLimits)
    secret_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Env vars sent encrypted, never stored in the registry or shown.",
    )

    @field_validator("secret_parameters")
    @classmethod
    def _secret_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_env(value)

    @field_validator("resource_limits", mode="before")
    @classmethod
    def _relic_limits(cls, value: Any) -> Any:
        """A plain ResourceLimits: the fields it sets, relic defaults for the others."""
        if isinstance(value, ResourceLimits) and not isinstance(value, RelicResourceLimits):
            return value.model_dump(exclude_unset=True)
        return value

    @model_validator(mode="after")
    def _secrets_apart(self) -> RelicStartRequest:
        _given_once(environment=self.environment, secret_parameters=self.secret_parameters)
        return self

    @field_validator("health_check_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or any(c in value for c in "\x00\r\n "):
            raise ValueError("must be a path starting with '/' and without spaces")
        return value

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: dict[int, int] | None) -> dict[int, int] | None:
        for container_port, host_port in (value or {}).items():
            if not (1 <= container_port <= 65535 and 1 <= host_port <= 65535):
                raise ValueError(f"port {container_port}:{host_port} is out of range 1-65535")
        return value


class RelicInfo(BaseModel):
    """A relic as the engine sees it (result of the relic tasks)."""

    relic_id: str
    relic_name: str
    session_id: str
    container_id: str | None = None
    container_name: str
    status: str
    healthy: bool = False
    internal_url: str | None = None
    network: str | None = None
    ip_address: str | None = None
    host: str | None = None
    started_at: datetime | None = None
    ports: dict[str, int] = Field(default_factory=dict)


class RelicExecRequest(_Strict, _HasSecrets):
    """Run a command in a running relic (argument of ``orchestrator.relics.exec``).

    A list command is run as it is; a string is run by ``sh -c``. ``timeout_seconds``
    defaults to the relic's own ``resource_limits.timeout_seconds`` and may not exceed it
    (nor the server's ``max_timeout_seconds``).
    """

    relic_id: Identifier
    session_id: Identifier | None = Field(
        None, description="When given, the relic must belong to this session."
    )
    command: (
        Annotated[list[Annotated[str, StringConstraints(max_length=65536)]], Field(min_length=1)]
        | Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    )
    environment: dict[str, str] = Field(default_factory=dict)
    secret_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Env vars never shown in results, logs or Flower."
    )
    working_dir: ContainerPath | None = None
    stdin: str | None = Field(None, description="Text given to the command's standard input.")
    timeout_seconds: int | None = Field(
        None, gt=0, description="Wall-clock limit; default: the relic's timeout_seconds."
    )

    @field_validator("environment", "secret_parameters")
    @classmethod
    def _env_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_env(value)

    @model_validator(mode="after")
    def _well_formed(self) -> RelicExecRequest:
        parts = [self.command] if isinstance(self.command, str) else self.command
        if any("\x00" in part for part in parts):
            raise ValueError("command must not contain NUL")
        if isinstance(self.command, str) and not self.command.strip():
            raise ValueError("command must not be blank")
        _given_once(environment=self.environment, secret_parameters=self.secret_parameters)
        return self


class _ExecIds(BaseModel):
    exec_id: str
    relic_id: str
    session_id: str = ""


class ExecResult(_RunOutcome, _ExecIds):
    """Outcome of a command run in a relic (result of ``orchestrator.relics.exec``)."""

    host: str | None = None


class ContainerStats(BaseModel):
    """One container's resource usage, computed as ``docker stats`` does."""

    container_id: str
    name: str
    status: str
    cpu_percent: float = 0.0
    memory_used_mb: float = 0.0
    memory_limit_mb: float = 0.0
    memory_percent: float = 0.0
    network_rx_mb: float = 0.0
    network_tx_mb: float = 0.0
    disk_read_mb: float = 0.0
    disk_write_mb: float = 0.0
    running_seconds: float = 0.0
    kind: str | None = None
    session_id: str | None = None
    host: str | None = None


class AggregateStats(BaseModel):
    """Stats of every managed container on every live host, merged."""

    containers: list[ContainerStats] = Field(default_factory=list)
    sessions: dict[str, dict[str, float]] = Field(default_factory=dict)
    totals: dict[str, float] = Field(default_factory=dict)
    executions_by_status: dict[str, int] = Field(default_factory=dict)
    executions_by_tool: dict[str, int] = Field(default_factory=dict)
    hosts: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class CleanupReport(BaseModel):
    """What a session cleanup removed, merged over every host the session touched."""

    session_id: str
    containers_removed: int = 0
    networks_removed: int = 0
    volumes_removed: int = 0
    errors: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Render a pydantic error as ``field.path: message; ...`` for humans."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{prefix}{loc}: {msg}")
    return "; ".join(parts)


def parse_request(model: type[M], data: Any) -> M:
    """Validate ``data`` into ``model``.

    Raises:
        InvalidRequest: the message names every offending field.
    """
    if isinstance(data, model):
        return data
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"request: expected a JSON object for {model.__name__}, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid {model.__name__}: {describe_validation_error(exc)}") from exc


def check_identifier(value: Any, field: str) -> str:
    """Validate a bare id argument (session, relic or execution id): see
    :func:`orchestrator.protocol.validate_id`, the one rule.

    Raises:
        InvalidRequest: naming ``field``.
    """
    return validate_id(field, value)
