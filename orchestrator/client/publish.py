"""Sending a task, past a pooled channel that a broker reconnect closed under it.

Celery publishes through a pool of producers, each bound to a pooled broker connection.
While a Redis broker restarts, a reconnect can close a channel that a pooled producer
still holds: kombu's Redis channel then has no connection, and the next publish on it
fails with ``AttributeError: 'NoneType' object has no attribute 'client'`` (from
``Channel._connparams``) instead of an error kombu's retry policy recovers from. The
send is refused before anything reaches the broker.

:func:`send_task` sends such a task once more, under the same task id, on a connection of
its own (a fresh producer, a fresh channel). Even if the first attempt had reached the
broker, the worker's execution lease and the stored result would absorb the duplicate.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.utils.uuid import uuid

__all__ = ["send_task", "from_kombu"]

log = logging.getLogger(__name__)


def from_kombu(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside kombu (its innermost frame is kombu's code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "/kombu/" in frames[-1].filename.replace("\\", "/")


def send_task(app: Celery, name: str, args: list[Any], **options: Any) -> AsyncResult:
    """``app.send_task(name, args=args, **options)``, sent again on a fresh connection if
    kombu's pooled channel was closed under it (see the module's docstring).

    ``options`` may carry a ``task_id``; without one, one is made here so that a second
    attempt reuses it.
    """
    options.setdefault("task_id", uuid())
    try:
        return app.send_task(name, args=args, **options)
    except AttributeError as exc:
        if not from_kombu(exc):
            raise
        log.warning(
            "task %s (%s): the pooled broker channel was closed under it (%s); "
            "sending it again on a fresh connection",
            options["task_id"],
            name,
            exc,
        )
    with app.connection_for_write() as connection:
        return app.send_task(name, args=args, connection=connection, **options)
