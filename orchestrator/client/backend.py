"""The clients' Celery apps: a quiet result backend, and closing every connection.

Celery's Redis backend subscribes to a task's pub/sub channel as it sends the task, for an
``AsyncResult.get`` that may come. The async client never calls it: it reads the result key
itself. A subscription nobody reads would pile every announced result up in the client's
pub/sub connection, so this backend sends without subscribing.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

__all__ = ["QuietRedisBackend", "quiet_backend_url", "close_app"]


class QuietRedisBackend(RedisBackend):
    """Celery's Redis result backend without the subscription made at each send."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe to nothing: results are read from their keys."""


def quiet_backend_url(url: str) -> str:
    """``url`` with this backend class in front, as Celery's ``result_backend`` takes it."""
    if not url.startswith(("redis://", "rediss://")):
        return url
    return f"{QuietRedisBackend.__module__}:{QuietRedisBackend.__name__}+{url}"


def close_app(app: Any) -> None:
    """Close a client's Celery app and the connections of its result backend (this thread's).

    Celery leaves the backend's connections (its pub/sub one included) open until the
    garbage collector finds them. Broker connections are kombu's, pooled for the whole
    process by URL and shared by every app on that broker: they stay for the next client.
    """
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and hasattr(consumer, "stop"):
        consumer.stop()
    if isinstance(backend, RedisBackend):
        backend.client.connection_pool.disconnect()
    app.close()
