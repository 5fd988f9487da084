"""The client's Celery configuration: connections, JSON only, routes, result settings.

``OrchestratorClient`` applies it to its own Celery app; :mod:`orchestrator.client.celeryconfig`
offers it to the ``celery`` command; the worker's ``celeryconfig.py`` sets it under the
worker's own settings (:func:`orchestrator.worker.config.worker_options`), so both ends agree
on serializers and routes. The client never imports the worker's top-level modules
(``worker``, ``celeryconfig``, ``tasks``): a user's project may have its own.
"""

from __future__ import annotations

from typing import Any

from orchestrator.protocol import DEFAULT_QUEUE, task_routes
from orchestrator.settings import Settings

__all__ = ["client_config", "transport_options"]


def transport_options(settings: Settings) -> dict[str, Any]:
    """Broker transport options; for Redis, the visibility timeout of unacked messages."""
    if not settings.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        return {}
    # Unacknowledged messages come back after this; leases make the redelivery harmless.
    # A consumer sweeps for them every tenth of the timeout (1 to 10 s): kombu's own default
    # sweep (unacked_restore_interval x unacked_restore_throttle) comes every 100 s only.
    timeout = settings.visibility_timeout_seconds
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": min(10, max(1, timeout // 10)),
        "unacked_restore_throttle": 1,
    }


#: kombu's retry policy for sending a task: 0, 0.5, 1, 1, ... seconds between 20 tries.
PUBLISH_RETRY_POLICY = {
    "max_retries": 20,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}


def client_config(settings: Settings) -> dict[str, Any]:
    """What a client needs: connections, JSON only, routes, result settings."""
    transport = transport_options(settings)
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_extended": True,
        "result_expires": settings.result_ttl_seconds,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": task_routes(),
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_channel_error_retry": True,
        # A send waits out a broker restart (Redis answers "loading" while it reads its
        # append-only file back) for about 20 s before it fails; Celery's default gives up
        # after about a second.
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # Every result-backend call (update_state's read-modify-write included, which Celery
        # does not retry by default) waits out a Redis restart: ~20 s on average, 40 s at most.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_max_sleep_between_retries_ms": 3000,
        "redis_backend_health_check_interval": 10,
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": True,
        "enable_utc": True,
    }
