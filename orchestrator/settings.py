"""One typed Settings object, read once from the environment.

Every field maps to an environment variable ``ORCHESTRATOR_<FIELD NAME IN CAPITALS>``
(for example ``max_memory_mb`` is ``ORCHESTRATOR_MAX_MEMORY_MB``). Lists are
comma-separated; booleans accept ``1/true/yes/on`` and ``0/false/no/off``.
Nothing in the package reads ``os.environ`` at import time: callers build a
Settings with :meth:`Settings.from_env` and pass it along.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import InvalidRequest
from orchestrator.models import PoolSpec

__all__ = ["Settings", "ENV_PREFIX"]

ENV_PREFIX = "ORCHESTRATOR_"


def env_name(field_name: str) -> str:
    """The environment variable of a Settings field: ``ORCHESTRATOR_<FIELD IN CAPITALS>``."""
    return ENV_PREFIX + field_name.upper()


DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class Settings(BaseModel):
    """Operator settings: connections, server-side maxima and defaults, timings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = Field(DEFAULT_REDIS_URL, description="Celery broker (redis:// or amqp://).")
    result_backend: str = Field(DEFAULT_REDIS_URL, description="Celery result backend (Redis).")
    redis_url: str | None = Field(
        None, description="Redis for the registry; defaults to the result backend."
    )
    host_name: str = Field(
        default_factory=socket.gethostname,
        description="Name of this Docker host; names the queue host.<name>.",
    )
    worker_concurrency: int = Field(32, ge=1, le=1024, description="Threads per worker.")

    max_memory_mb: int = Field(8192, ge=4, description="Largest memory_mb a request may ask.")
    max_cpu_limit: float = Field(4.0, gt=0, description="Largest cpu_limit (cores).")
    max_timeout_seconds: int = Field(3600, ge=1, description="Largest timeout_seconds.")
    max_pids_limit: int = Field(4096, ge=8, description="Largest pids_limit.")
    default_pids_limit: int = Field(256, ge=8, description="pids_limit when none is asked.")
    log_cap_bytes: int = Field(
        262_144, ge=1024, description="Bytes kept per stream (head and tail) in a result."
    )
    container_log_max_size: str = Field("20m", description="json-file log size cap per container.")

    wait_slice_seconds: float = Field(0.25, gt=0, le=5, description="Wait-loop granularity.")
    grace_seconds: int = Field(60, ge=0, description="Added to a tool's deadline label.")
    lease_seconds: int = Field(20, ge=3, description="Lifetime of an execution's lease.")
    reaper_interval_seconds: float = Field(5.0, gt=0, description="How often leases are checked.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a worker says it is alive.")
    host_ttl_seconds: int = Field(20, ge=2, description="A host is gone after this silence.")
    visibility_timeout_seconds: int = Field(
        600, ge=10, description="Redis broker redelivery of unacknowledged messages."
    )
    result_ttl_seconds: int = Field(86400, ge=60, description="Results and registry lifetime.")
    client_wait_slack_seconds: int = Field(
        300,
        ge=0,
        description=(
            "A client's default wait for run_tool and start_relic: the request's own limit "
            "(timeout_seconds, health_timeout_seconds) plus this (queueing, image pull, build)."
        ),
    )
    docker_timeout_seconds: int = Field(120, ge=5, description="docker-py API timeout.")
    docker_retries: int = Field(5, ge=0, description="Retries while the engine is unreachable.")

    allowed_volume_roots: list[str] = Field(
        default_factory=list, description="Host paths under which bind mounts are allowed."
    )
    allowed_build_roots: list[str] = Field(
        default_factory=list, description="Worker paths under which build contexts are allowed."
    )
    session_egress: bool = Field(False, description="Let session networks reach the outside.")
    session_subnet_pool: str = Field(
        "10.213.0.0/16", description="Address pool carved into session network subnets."
    )
    session_subnet_prefix: int = Field(26, ge=16, le=29, description="Size of one subnet.")
    session_ttl_seconds: int = Field(3600, ge=10, description="Idle lifetime of a session.")
    session_max_lifetime_seconds: int = Field(
        86400, ge=10, description="Hard cap on a session's life, keepalive included."
    )
    janitor_interval_seconds: float = Field(30.0, gt=0, description="How often beat runs it.")
    network_grace_seconds: float = Field(
        60.0, ge=0, description="An empty managed network younger than this is kept."
    )
    relic_max_health_timeout_seconds: int = Field(
        600, ge=1, description="Largest health_timeout_seconds a relic start may ask."
    )
    read_only_root: bool = Field(
        False, description="Run containers with a read-only root and a tmpfs on /tmp."
    )
    tmpfs_size_mb: int = Field(64, ge=1, description="Size of that /tmp tmpfs.")
    pool: list[PoolSpec] = Field(
        default_factory=list,
        description='Warm pools as JSON: [{"image": "...", "size": 2, "memory_mb": 512, '
        '"cpu_limit": 1.0}]; each size is a minimum the adaptive pools never go below.',
    )
    pool_memory_mb: int = Field(
        4096,
        ge=0,
        description="Memory (the sum of their limits) that warm pools sized from demand may "
        "hold idle per host; 0 turns adaptive pools off (ORCHESTRATOR_POOL still applies).",
    )
    pool_max_size: int = Field(
        16, ge=1, le=256, description="Most idle containers an adaptive pool holds per host."
    )
    pool_refill_concurrency: int = Field(
        1,
        ge=1,
        le=16,
        description="Pool containers made (or idle ones removed) at once per worker; they wait "
        "behind pooled runs in progress. Used ones are removed one at a time beside.",
    )
    relic_cap_add: list[str] = Field(
        default_factory=list, description="Capabilities relics may keep (all others dropped)."
    )
    flower_basic_auth: str = Field(
        "admin:orchestrator",
        description="user:password protecting Flower (this default is refused outside "
        "development).",
    )

    # -- containment: networks, published ports, quotas, credentials ----------------------
    allowed_network_modes: list[str] = Field(
        default_factory=lambda: ["none", "session"],
        description="Tool network modes allowed (none, session, bridge); bridge also allows "
        "relics with create_private_network=false.",
    )
    relic_ports_host_ip: str = Field(
        "127.0.0.1", description="Host address relic ports are published on."
    )
    relic_host_port_range: str = Field(
        "20000-29999", description="Host ports relics may publish on (never below 1024)."
    )
    relic_max_ports: int = Field(4, ge=0, le=64, description="Published ports per relic.")
    container_runtime: str | None = Field(
        None, description="OCI runtime of every container (runsc for gVisor, kata-runtime...)."
    )
    max_request_bytes: int = Field(
        262_144,
        ge=1024,
        description="Bytes of environment, parameters, secret_parameters and command in a request.",
    )
    session_max_containers: int = Field(
        32, ge=1, description="Containers of one session at once (tool runs and relics)."
    )
    session_max_relics: int = Field(16, ge=1, description="Relics of one session.")
    session_max_memory_mb: int = Field(
        16384, ge=6, description="Memory limits committed by one session's containers (MB)."
    )
    host_max_memory_mb: int = Field(
        0, ge=0, description="Memory limits committed on one host (MB); 0: its physical memory."
    )
    host_max_relic_starts: int = Field(
        16, ge=1, description="Relic starts (health waits included) at once per host."
    )
    live_log_cap_bytes: int = Field(
        65_536, ge=1024, description="Bytes of live output kept in Redis per stream of a run."
    )
    live_log_ttl_seconds: int = Field(3600, ge=60, description="Lifetime of a run's live output.")
    files_max_file_bytes: int = Field(
        33_554_432, ge=1024, description="Largest file written or read back (put/get, tool files)."
    )
    files_max_request_bytes: int = Field(
        67_108_864,
        ge=1024,
        description="Bytes of files (and stdin) in one put_files, get_files or tool run.",
    )
    files_max_count: int = Field(
        1000, ge=1, description="Files in one put_files, get_files or tool run."
    )
    collect_inline_max_bytes: int = Field(
        65_536,
        ge=0,
        description="A collected file larger than this is kept beside the result, fetched apart.",
    )
    flower_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Host headers Flower answers (plus its --address); * allows any.",
    )
    dev_allow_default_credentials: bool = Field(
        False, description="Development only: let Flower start with admin:orchestrator."
    )

    # -- containment: image builds and the image disk budget ------------------------------
    allow_builds: bool = Field(
        False, description="Let requests build images from a Dockerfile (off: build is refused)."
    )
    allow_build_network: bool = Field(
        False,
        description="Give builds the default bridge (RUN steps, ADD <url>); needs bridge in "
        "allowed_network_modes. Off: builds have no network.",
    )
    build_timeout_seconds: int = Field(600, ge=1, description="Wall-clock limit of one build.")
    build_memory_mb: int = Field(2048, ge=6, description="Memory (no swap) of a RUN step (MB).")
    build_cpu_limit: float = Field(2.0, gt=0, description="CPU cores of a RUN step.")
    build_cgroup_parent: str = Field(
        "",
        description="Cgroup parent of RUN steps (e.g. one with pids.max set); empty: the "
        "engine's default.",
    )
    max_build_context_mb: int = Field(
        100, ge=1, description="Largest build context (tar of the directory) a build sends (MB)."
    )
    max_built_image_mb: int = Field(
        4096, ge=1, description="Largest image a build may produce (MB); larger ones are removed."
    )
    image_disk_budget_mb: int = Field(
        20480,
        ge=0,
        description="Disk the images the orchestrator built or pulled may use per host (MB); "
        "the janitor removes unused ones, least recently used first.",
    )
    built_image_max_age_seconds: int = Field(
        604800, ge=60, description="Built images older than this are removed once unused."
    )
    image_grace_seconds: float = Field(
        300.0, ge=0, description="An image used more recently than this is never removed."
    )

    # -- secrets: encrypted between client and worker ---------------------------------------
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key(s) encrypting secret_parameters between clients and workers, "
        "comma-separated: the first encrypts, all decrypt (see docs/secrets.md).",
    )
    dev_allow_plaintext_secrets: bool = Field(
        False,
        description="Development only: let a client with no secret_key send secret_parameters "
        "in plain text (they then sit in Redis).",
    )

    @field_validator("allowed_volume_roots", "allowed_build_roots", "relic_cap_add", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_network_modes", "flower_allowed_hosts", mode="before")
    @classmethod
    def _split_containment_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_network_modes")
    @classmethod
    def _network_modes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {"none", "bridge", "session"})
        if unknown:
            raise ValueError(f"unknown network modes {unknown}: use none, session, bridge")
        return value

    @field_validator("relic_ports_host_ip")
    @classmethod
    def _host_ip(cls, value: str) -> str:
        ipaddress.ip_address(value)  # raises ValueError with the reason
        return value

    @field_validator("relic_host_port_range")
    @classmethod
    def _port_range(cls, value: str) -> str:
        low, _, high = value.partition("-")
        first, last = int(low), int(high or low)
        if not 1024 <= first <= last <= 65535:
            raise ValueError("must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
        return value

    @field_validator("container_runtime")
    @classmethod
    def _runtime(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError("must be a runtime name such as runsc or kata-runtime")
        return value

    @property
    def relic_host_ports(self) -> range:
        """The host ports relics may publish on (``relic_host_port_range``)."""
        low, _, high = self.relic_host_port_range.partition("-")
        return range(int(low), int(high or low) + 1)

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        from orchestrator.core.secrets import keyring  # core imports Settings: import late

        keyring(value.get_secret_value() if value is not None else None)  # ValueError: which
        return value

    @field_validator("build_cgroup_parent")
    @classmethod
    def _cgroup_parent(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_./-]{0,255}", value) or ".." in value.split("/"):
            raise ValueError("must be a cgroup path such as /orchestrator-builds or a .slice")
        return value

    @field_validator("pool", mode="before")
    @classmethod
    def _pool_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @field_validator("session_subnet_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        ipaddress.IPv4Network(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        pool = ipaddress.IPv4Network(self.session_subnet_pool)
        if self.session_subnet_prefix < pool.prefixlen:
            raise ValueError("session_subnet_prefix must be at least the pool's prefix length")
        if self.default_pids_limit > self.max_pids_limit:
            raise ValueError("default_pids_limit must not exceed max_pids_limit")
        return self

    @property
    def registry_url(self) -> str:
        """The Redis URL holding the registry (executions, relics, sessions, hosts)."""
        if self.redis_url:
            return self.redis_url
        if self.result_backend.startswith(("redis://", "rediss://")):
            return self.result_backend
        return DEFAULT_REDIS_URL

    @property
    def host_queue(self) -> str:
        """The queue only this host's workers consume."""
        return f"host.{self.host_name}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build Settings from ``ORCHESTRATOR_*`` variables.

        Args:
            environ: the mapping to read; ``os.environ`` when omitted.
            **overrides: field values that win over the environment.

        Raises:
            InvalidRequest: a variable does not parse; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env and env[key] != "":
                values[name] = env[key]
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidRequest(f"invalid settings: {problems}") from exc
