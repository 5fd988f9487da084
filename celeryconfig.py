"""Map orchestrator Settings onto Celery's configuration.

Used by the worker, beat and Flower (``worker.py``) and by clients
(:mod:`orchestrator.client`), so both ends agree on serializers and queues.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from orchestrator.routing import DEFAULT_QUEUE, RELICS_QUEUE, TOOLS_QUEUE, task_routes
from orchestrator.settings import Settings

__all__ = ["client_config", "worker_config"]


def _transport_options(settings: Settings) -> dict[str, Any]:
    if not settings.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        return {}
    # Unacknowledged messages come back after this; leases make the redelivery harmless.
    return {"visibility_timeout": settings.visibility_timeout_seconds}


def client_config(settings: Settings) -> dict[str, Any]:
    """What a client needs: connections, JSON only, routes, result settings."""
    transport = _transport_options(settings)
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


def worker_config(settings: Settings) -> dict[str, Any]:
    """Client settings plus what only workers need: queues, pool, acks, events."""
    return {
        **client_config(settings),
        "task_queues": [
            Queue(DEFAULT_QUEUE),
            Queue(TOOLS_QUEUE),
            Queue(RELICS_QUEUE),
            Queue(settings.host_queue),
        ],
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_concurrency,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # No STARTED write per task: tool runs report RUNNING (with host and container)
        # themselves, and Flower learns of starts from task events.
        "task_track_started": False,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_max_retries": None,
        "beat_schedule": {
            "orchestrator-janitor": {
                "task": "orchestrator.janitor.run",
                "schedule": settings.janitor_interval_seconds,
                "options": {"expires": settings.janitor_interval_seconds},
            }
        },
    }
