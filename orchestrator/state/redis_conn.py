"""The registry's Redis connection (shared by workers and clients)."""

from __future__ import annotations

from typing import Any

import redis as redis_lib
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from orchestrator.settings import Settings

__all__ = ["broker_probe", "redis_client", "RETRY_SECONDS"]

# How long a registry call keeps retrying while Redis is unreachable (a restart, a failover):
# 0.05, 0.1, 0.2, 0.4, 0.8 s, then every 1 s. redis-py's own default gives up after ~2 s.
RETRY_SECONDS = 30
_RETRY_ATTEMPTS = 5 + RETRY_SECONDS


def redis_client(settings: Settings) -> Any:
    """A redis-py client for the registry, with health checks and reconnects.

    ``rediss://`` URLs use TLS; a password in the URL is used as is. A call made while
    Redis is unreachable waits for it (up to about :data:`RETRY_SECONDS`) instead of
    failing, so a Redis restart does not fail the runs in flight.
    """
    return redis_lib.Redis.from_url(
        settings.registry_url,
        health_check_interval=10,
        socket_keepalive=True,
        socket_connect_timeout=5,
        retry_on_timeout=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.025), _RETRY_ATTEMPTS),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
    )


def broker_probe(url: str) -> Any:
    """A redis-py client for quick looks at a Redis broker: short timeouts, no retries.

    The caller asks again later instead of waiting out an outage.
    """
    return redis_lib.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
