"""Sending a task again when a crashed Redis broker lost its message.

kombu's Redis transport takes a message off its queue with ``BRPOP``. Redis writes that
pop to its append-only file before it writes the reply to the worker; killed in between,
it comes back without the message, and no worker ever had it. The task was accepted and
is gone. Nothing on the server side can send it again: the message (secrets included)
lived only in the queue.

The client that sent the task still holds it. While it waits for the result, it notices
that the broker is a new Redis process (its ``run_id`` changed since the send); it then
looks for the message in the queues and among the unacknowledged deliveries, and when the
task is in neither and has no state, twice a second apart, it sends the task again under
the same id. A duplicate is harmless: the execution lease and the stored result absorb
a second delivery, so this errs on the side of sending.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError, ResponseError

from orchestrator.client import publish
from orchestrator.state import redis_broker

__all__ = ["LostMessages", "Sent", "CHECK_EVERY_SECONDS"]

log = logging.getLogger(__name__)

#: How often a waiting client asks whether the broker restarted.
CHECK_EVERY_SECONDS = 10.0
#: The second look for a vanished message comes this much later (one in flight between the
#: queue and the unacknowledged set shows up by then).
CONFIRM_AFTER_SECONDS = 1.0


@dataclass
class Sent:
    """A task this client sent, with what it takes to send it again."""

    name: str
    args: list[Any]
    options: dict[str, Any]
    async_result: AsyncResult
    queues: tuple[str, ...]
    epoch: str
    checked_at: float = field(default_factory=time.monotonic)


class LostMessages:
    """Finds tasks a Redis broker lost and sends them again.

    Args:
        app: the client's Celery app (it sends the task again).
        broker: a redis-py client of the broker's server and database.
    """

    def __init__(self, app: Celery, broker: Any) -> None:
        self.app = app
        self.broker = broker
        self._epoch: str | None = None
        #: False when the broker refuses ``INFO`` (an ACL): restarts cannot be seen then.
        self.enabled = True

    def epoch(self, refresh: bool = False) -> str:
        """The broker's Redis ``run_id``: it changes when the server restarts ("" unknown)."""
        if self.enabled and (self._epoch is None or refresh):
            try:
                self._epoch = str(self.broker.info("server")["run_id"])
            except ResponseError:
                self.enabled = False
            except (RedisError, KeyError, OSError):
                return ""
        return self._epoch or ""

    def present(self, task_id: str, queues: tuple[str, ...]) -> bool:
        """Whether the task's message waits in one of ``queues`` or is being delivered."""
        lists = [key for queue in queues for key in redis_broker.queue_lists(queue)]
        for key in lists:
            if any(redis_broker.task_id(raw) == task_id for raw in self.broker.lrange(key, 0, -1)):
                return True
        unacked = self.broker.hvals(redis_broker.UNACKED_KEY)
        return any(redis_broker.unacked_task_id(raw) == task_id for raw in unacked)

    def vanished(self, sent: Sent) -> bool:
        """No state, no queued message, no delivery: the broker lost this task."""
        if sent.async_result.state != "PENDING":
            return False
        return not self.present(sent.async_result.id, sent.queues)

    def check(self, sent: Sent) -> bool:
        """Send ``sent`` again if the broker restarted and lost it; True if it was sent.

        Cheap when nothing happened: at most one ``INFO`` every
        :data:`CHECK_EVERY_SECONDS`; the queues are read only after a restart.
        """
        now = time.monotonic()
        if not self.enabled or now - sent.checked_at < CHECK_EVERY_SECONDS:
            return False
        sent.checked_at = now
        try:
            current = self.epoch(refresh=True)
            if not self.enabled or not current or current == sent.epoch:
                return False
            lost = self.vanished(sent)
            if lost:
                time.sleep(CONFIRM_AFTER_SECONDS)
                lost = self.vanished(sent)
        except RedisError:
            return False  # the broker is not back yet; the next check asks again
        if lost:
            log.warning(
                "task %s (%s) was lost by the restarted broker; sending it again",
                sent.async_result.id,
                sent.name,
            )
            try:
                publish.send_task(
                    self.app, sent.name, sent.args, task_id=sent.async_result.id, **sent.options
                )
            except (OperationalError, RedisError, OSError) as exc:
                log.warning("could not send task %s again yet: %s", sent.async_result.id, exc)
                return False  # the epoch stays old: the next check tries again
        sent.epoch = current
        return lost
