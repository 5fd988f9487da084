"""The worker process's single :class:`~orchestrator.runtime.Runtime`, made on first use."""

from __future__ import annotations

import threading
from typing import Any

from celery import current_app

from orchestrator.settings import Settings
from orchestrator.state.redis_conn import redis_client
from orchestrator.worker.runtime import Runtime

__all__ = ["get_runtime", "reset_runtime"]

_lock = threading.Lock()
_runtime: Runtime | None = None


def _enqueue(
    work_id: str, request: dict[str, Any], queue: str, task: str = "orchestrator.tools.execute"
) -> None:
    kwargs = {"requeued": True} if task == "orchestrator.tools.execute" else {}
    current_app.send_task(task, args=[request], kwargs=kwargs, task_id=work_id, queue=queue)


def get_runtime() -> Runtime:
    """This process's Runtime, built from the environment on first call."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                settings = Settings.from_env()
                _runtime = Runtime(settings, redis_client(settings), enqueue=_enqueue)
    return _runtime


def reset_runtime(runtime: Runtime | None = None) -> None:
    """Replace the process's Runtime (tests inject one with fakes)."""
    global _runtime
    with _lock:
        _runtime = runtime
