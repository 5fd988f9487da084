"""The registry's Redis connection (shared by workers and clients)."""

from __future__ import annotations

from typing import Any

import redis as redis_lib

from orchestrator.settings import Settings

__all__ = ["redis_client"]


def redis_client(settings: Settings) -> Any:
    """A redis-py client for the registry, with health checks and reconnects.

    ``rediss://`` URLs use TLS; a password in the URL is used as is.
    """
    return redis_lib.Redis.from_url(
        settings.registry_url,
        health_check_interval=10,
        socket_keepalive=True,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )
