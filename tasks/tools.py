"""Tool tasks: ``orchestrator.tools.execute`` and ``orchestrator.tools.cancel``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Ignore

from orchestrator.errors import DockerUnavailable, WrongHost
from orchestrator.models import ToolExecutionRequest, check_identifier, parse_request
from orchestrator.protocol import FINAL_STATUSES, Task
from orchestrator.state import sessions
from orchestrator.worker import execution
from tasks.forwarding import forward
from tasks.runtime import get_runtime

RETRY = {
    "autoretry_for": (DockerUnavailable,),
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(bind=True, name=Task.TOOLS_EXECUTE.value, **RETRY)
def execute(
    self: Any, request: dict[str, Any] | None = None, requeued: bool = False, **fields: Any
) -> dict[str, Any]:
    """Run one tool; the execution id is this task's id. Returns a ToolExecutionResult."""
    req = parse_request(ToolExecutionRequest, request if request is not None else fields)
    rt = get_runtime()

    def progress(state: str, meta: dict[str, Any]) -> None:
        self.update_state(state=state, meta={"execution_id": self.request.id, **meta})

    try:
        if req.network_mode == "session":
            sessions.require_owner(rt, req.session_id)
        result = execution.run_execution(
            rt, req, self.request.id, progress=progress, requeued=requeued
        )
    except execution.DuplicateDelivery:
        raise Ignore() from None
    except WrongHost as exc:
        forward(self, exc, [req.model_dump(mode="json")], {"requeued": requeued})
    except DockerUnavailable:
        raise  # retried with the real arguments
    except Exception:
        _hide_secrets(self, req)
        raise
    _hide_secrets(self, req)
    return result.model_dump(mode="json")


def _hide_secrets(task: Any, req: ToolExecutionRequest) -> None:
    """Keep secret values out of the arguments the result backend stores (result_extended)."""
    if req.secret_parameters:
        task.request.args = [req.redacted()]
        task.request.kwargs = {}


@shared_task(bind=True, name=Task.TOOLS_CANCEL.value)
def cancel(self: Any, execution_id: str) -> dict[str, Any]:
    """Cancel an execution on whatever host runs it.

    Sets the flag the wait loop checks and revokes the task if it has not started.
    Returns ``{"execution_id", "cancelled", "status"}``.
    """
    check_identifier(execution_id, "execution_id")
    rt = get_runtime()
    done = rt.executions.result(execution_id)
    if done is not None and done.status in FINAL_STATUSES:
        return {"execution_id": execution_id, "cancelled": False, "status": done.status}
    rt.executions.request_cancel(execution_id)
    self.app.control.revoke(execution_id)
    entry = rt.executions.get(execution_id)
    status = "cancelling" if entry.get("state") == "running" else "cancelled"
    return {"execution_id": execution_id, "cancelled": True, "status": status}
