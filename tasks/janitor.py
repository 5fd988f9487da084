"""Janitor tasks, run by Celery beat: ``orchestrator.janitor.run`` fans out
``orchestrator.janitor.host`` to every live host and merges their reports."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import shared_task

from orchestrator.errors import HostUnavailable
from orchestrator.protocol import Task
from orchestrator.state import keys
from orchestrator.worker import cleanup, janitor
from tasks.forwarding import fan_out
from tasks.runtime import get_runtime
from tasks.tools import RETRY


@shared_task(name=Task.JANITOR_HOST.value, **RETRY)
def host() -> dict[str, Any]:
    """One janitor pass over the engine of the host that runs it."""
    rt = get_runtime()
    return janitor.reap_host(rt, network_grace_seconds=rt.settings.network_grace_seconds)


@shared_task(name=Task.JANITOR_MERGE.value)
def merge(reports: list[dict[str, Any]], failed_messages: list[str]) -> dict[str, Any]:
    """Merge per-host janitor reports; forget the sessions that ended."""
    redis = get_runtime().redis
    for report in reports:
        for session_id in report["sessions_ended"]:
            cleanup.forget_session(redis, session_id)
    summary = {
        "hosts": sorted(r["host"] for r in reports),
        "containers_removed": [
            c | {"host": r["host"]} for r in reports for c in r["containers_removed"]
        ],
        "networks_removed": sum(r["networks_removed"] for r in reports),
        "volumes_removed": sum(r["volumes_removed"] for r in reports),
        "images_removed": [
            i | {"host": r["host"]} for r in reports for i in r.get("images_removed", [])
        ],
        "sessions_ended": {k: v for r in reports for k, v in r["sessions_ended"].items()},
        "messages_failed": failed_messages,
        "errors": [e for r in reports for e in r["errors"]],
    }
    redis.set(keys.JANITOR_LAST_RUN, json.dumps({"at": time.time(), "hosts": summary["hosts"]}))
    return summary


@shared_task(bind=True, name=Task.JANITOR_RUN.value)
def run(self: Any) -> dict[str, Any]:
    """Reap every live host; fail messages stuck on the queues of dead hosts."""
    rt = get_runtime()
    failed = _drain(self.app, rt)
    hosts = sorted(set(rt.hosts.live_hosts()) | {rt.host_name})
    fan_out(self, host.si(), hosts, merge.s(failed))


def _drain(app: Any, rt: Any) -> list[str]:
    if not str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return []  # AMQP brokers expire messages with their own TTLs
    import redis

    broker = redis.Redis.from_url(app.conf.broker_url)
    try:

        def mark(task_id: str, message: str) -> None:
            app.backend.mark_as_failure(task_id, HostUnavailable(message))

        return janitor.drain_dead_host_queues(rt, broker, mark)
    finally:
        broker.close()
