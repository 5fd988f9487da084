"""How kombu's Redis transport lays messages out in the broker's database.

One list per queue and priority step (``<queue>``, ``<queue>\\x06\\x163``, ...), workers
taking from the right end; deliveries not yet acknowledged in the ``unacked`` hash, each
as ``[message, exchange, routing key]``; a message is Celery's JSON with the task id in
its headers. The janitor and the client's lost-message check read this layout.
"""

from __future__ import annotations

import json

__all__ = ["PRIORITY_SUFFIXES", "UNACKED_KEY", "queue_lists", "task_id", "unacked_task_id"]

#: The suffixes of a queue's lists, one per kombu priority step.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: The hash of deliveries not yet acknowledged.
UNACKED_KEY = "unacked"


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority step."""
    return [f"{queue}{suffix}" for suffix in PRIORITY_SUFFIXES]


def task_id(raw: bytes | str) -> str | None:
    """The task id of a queued message, or None if it is not a Celery message."""
    try:
        return str(json.loads(raw)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None


def unacked_task_id(raw: bytes | str) -> str | None:
    """The task id of an ``unacked`` entry, or None if it is not a Celery delivery."""
    try:
        message = json.loads(raw)[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
