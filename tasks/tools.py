"""Tool tasks: ``orchestrator.tools.execute`` and ``orchestrator.tools.cancel``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Ignore

from orchestrator.errors import DockerUnavailable, ExecutionNotFound, WrongHost
from orchestrator.models import FileContent, ToolExecutionRequest, parse_request
from orchestrator.protocol import FINAL_STATUSES, Task, validate_id
from orchestrator.state import collected, sessions
from orchestrator.worker import execution
from tasks.base import SecretTask
from tasks.forwarding import forward
from tasks.runtime import get_runtime

RETRY = {
    "autoretry_for": (DockerUnavailable,),
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(bind=True, base=SecretTask, name=Task.TOOLS_EXECUTE.value, **RETRY)
def execute(
    self: Any, request: dict[str, Any] | None = None, requeued: bool = False, **fields: Any
) -> dict[str, Any]:
    """Run one tool; the execution id is this task's id. Returns a ToolExecutionResult.

    Secret parameters arrive encrypted (or plain, from a plain Celery client); the worker
    decrypts them in memory only. The arguments Celery stores are masked (SecretTask).
    """
    with self.containing_errors():
        return _execute(self, request if request is not None else fields, requeued)


def _execute(task: Any, request: Any, requeued: bool) -> dict[str, Any]:
    req = parse_request(ToolExecutionRequest, request)
    rt = get_runtime()

    def progress(state: str, meta: dict[str, Any]) -> None:
        task.update_state(state=state, meta={"execution_id": task.request.id, **meta})

    try:
        # The task id names the container, and a caller (Flower's async-apply) chooses it.
        execution_id = validate_id("execution_id", task.request.id)
        if req.network_mode == "session" or any(not v.is_bind for v in req.volumes):
            # Session networks and session volumes live on the session's host.
            sessions.require_owner(rt, req.session_id)
        result = execution.run_execution(
            rt, req, execution_id, progress=progress, requeued=requeued
        )
    except execution.DuplicateDelivery:
        raise Ignore() from None
    except WrongHost as exc:  # sent on encrypted (SecretTask.apply_async)
        forward(task, exc, [req.model_dump(mode="json")], {"requeued": requeued})
    return result.model_dump(mode="json")


@shared_task(name=Task.TOOLS_COLLECTED_FILE.value)
def collected_file(execution_id: str, path: str) -> dict[str, Any]:
    """One collected file of a finished run, with its bytes (also those kept apart).

    Returns a FileContent. Raises ``ExecutionNotFound`` when the run, its file or the
    bytes kept apart are unknown or expired.
    """
    validate_id("execution_id", execution_id)
    rt = get_runtime()
    done = rt.executions.result(execution_id)
    item = done.collected(path) if done is not None else None
    if item is None:
        raise ExecutionNotFound(f"execution {execution_id}: no collected file {path!r}")
    if item.ref is not None:
        data = collected.load(rt.redis, item.ref)
        item = FileContent.of(item.path, data, item.mode, size=item.size, truncated=item.truncated)
    return item.model_dump(mode="json")


@shared_task(bind=True, name=Task.TOOLS_CANCEL.value)
def cancel(self: Any, execution_id: str) -> dict[str, Any]:
    """Cancel an execution on whatever host runs it.

    Sets the flag the wait loop checks and revokes the task if it has not started.
    Returns ``{"execution_id", "cancelled", "status"}``.
    """
    validate_id("execution_id", execution_id)
    rt = get_runtime()
    done = rt.executions.result(execution_id)
    if done is not None and done.status in FINAL_STATUSES:
        return {"execution_id": execution_id, "cancelled": False, "status": done.status}
    finished = rt.executions.get(execution_id)  # an exec in a relic keeps its result apart
    if finished.finished and finished.status in FINAL_STATUSES:
        return {"execution_id": execution_id, "cancelled": False, "status": finished.status}
    rt.executions.request_cancel(execution_id)
    self.app.control.revoke(execution_id)
    entry = rt.executions.get(execution_id)
    status = "cancelling" if entry.state == "running" else "cancelled"
    return {"execution_id": execution_id, "cancelled": True, "status": status}
