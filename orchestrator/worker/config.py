"""The Celery settings only workers (and beat) need: queues, pool, acknowledgements, events,
the janitor's schedule.

``celeryconfig.py`` sets these on top of the client's (:mod:`orchestrator.client.config`), so
both ends agree on serializers, routes and connections.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from orchestrator.protocol import DEFAULT_QUEUE, RELICS_QUEUE, TOOLS_QUEUE
from orchestrator.settings import Settings

__all__ = ["worker_options"]


def worker_options(settings: Settings) -> dict[str, Any]:
    """What only workers need, on top of the client's settings: queues, pool, acks, events."""
    return {
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
