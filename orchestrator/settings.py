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
import socket
from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import InvalidRequest
from orchestrator.models import PoolSpec

__all__ = ["Settings", "ENV_PREFIX"]

ENV_PREFIX = "ORCHESTRATOR_"
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
        1_048_576, ge=1024, description="Bytes kept per stream (head and tail) in a result."
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
    relic_max_health_timeout_seconds: int = Field(600, ge=1)
    read_only_root: bool = Field(
        False, description="Run containers with a read-only root and a tmpfs on /tmp."
    )
    tmpfs_size_mb: int = Field(64, ge=1, description="Size of that /tmp tmpfs.")
    pool: list[PoolSpec] = Field(
        default_factory=list,
        description='Warm pools as JSON: [{"image": "...", "size": 2, "memory_mb": 512, '
        '"cpu_limit": 1.0}]',
    )
    relic_cap_add: list[str] = Field(
        default_factory=list, description="Capabilities relics may keep (all others dropped)."
    )
    flower_basic_auth: str = Field(
        "admin:orchestrator", description="user:password protecting Flower."
    )

    @field_validator("allowed_volume_roots", "allowed_build_roots", "relic_cap_add", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
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
