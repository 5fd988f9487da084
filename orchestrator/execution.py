"""One tool execution, end to end, safe under redelivery.

The lifecycle: take the execution's lease → resolve the image → find or create
the container (named from the execution id) → start it → wait in slices until
exit, deadline or cancellation → collect capped output and usage → store the
result → remove the container in ``finally``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator import containers, sessions
from orchestrator.config import check_limits, check_volumes, tool_container_config
from orchestrator.config import tool_container_name as container_name
from orchestrator.engine import docker_errors
from orchestrator.errors import (
    ContainerConflict,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    OrchestratorError,
    SessionError,
)
from orchestrator.images import resolve_image
from orchestrator.logs import LiveLog, LogFollower
from orchestrator.models import ToolExecutionRequest, ToolExecutionResult, ToolRunStats
from orchestrator.output import extract_result
from orchestrator.runtime import Runtime
from orchestrator.sampling import UsageSampler
from orchestrator.stats import parse_docker_time

__all__ = ["run_execution", "DuplicateDelivery", "Progress"]

log = logging.getLogger(__name__)

# progress(state, meta): report a Celery state such as "PULLING" or "RUNNING".
Progress = Callable[[str, dict[str, Any]], None]


class DuplicateDelivery(OrchestratorError):
    """Raised when another live worker holds this execution's lease."""


def _noop(state: str, meta: dict[str, Any]) -> None:
    return None


def run_execution(
    rt: Runtime,
    request: ToolExecutionRequest,
    execution_id: str,
    *,
    progress: Progress = _noop,
    requeued: bool = False,
) -> ToolExecutionResult:
    """Run (or resume) one execution and return its result.

    Args:
        rt: the worker's runtime.
        request: the validated request.
        execution_id: the Celery task id; names the container.
        progress: receives state changes for Celery/Flower.
        requeued: the request came back from the registry (secrets redacted).

    Raises:
        InvalidRequest / LimitExceeded: the request breaks server policy; nothing started.
        DuplicateDelivery: another worker runs this execution right now.
        DockerUnavailable: the engine is unreachable (the task retries).
    """
    check_limits(request.resource_limits, rt.settings)
    check_volumes(request.volumes, rt.settings)
    if not rt.leases.acquire(execution_id):
        raise DuplicateDelivery(f"execution {execution_id} is running on another worker")
    try:
        done = rt.executions.result(execution_id)
        if done is not None:
            return done
        return _Run(rt, request, execution_id, progress, requeued).run()
    finally:
        rt.leases.release(execution_id)


class _Run:
    """The state of one execution attempt on this worker."""

    def __init__(
        self,
        rt: Runtime,
        request: ToolExecutionRequest,
        execution_id: str,
        progress: Progress,
        requeued: bool,
    ) -> None:
        self.rt = rt
        self.request = request
        self.execution_id = execution_id
        self.progress = progress
        self.requeued = requeued
        self.name = container_name(execution_id)
        self.container: Any = None
        self.follower: LogFollower

    def _result(self, status: str, **fields: Any) -> ToolExecutionResult:
        return ToolExecutionResult(
            execution_id=self.execution_id,
            tool_name=self.request.tool_name,
            session_id=self.request.session_id,
            status=status,
            host=self.rt.host_name,
            **fields,
        )

    def run(self) -> ToolExecutionResult:
        rt = self.rt
        rt.executions.start(
            self.execution_id,
            {
                "host": rt.host_name,
                "tool_name": self.request.tool_name,
                "session_id": self.request.session_id,
                "request": self.request.redacted(),
                "has_secrets": "1" if self.request.secret_parameters else "",
                "started": str(time.time()),
            },
        )
        try:
            result = self._attempt()
        except (ImageNotFound, DockerError, SessionError) as exc:
            if isinstance(exc, DockerUnavailable):
                raise
            result = self._result("error", error=str(exc), container_id=self._container_id())
        finally:
            self._cleanup()
        result = self._redact(result)
        rt.executions.finish(result)
        return result

    def _container_id(self) -> str | None:
        return getattr(self.container, "id", None)

    def _attempt(self) -> ToolExecutionResult:
        rt = self.rt
        self.container = containers.find(rt.docker, self.name)
        if self.container is None:
            if rt.executions.cancel_requested(self.execution_id):
                return self._result("cancelled", error="cancelled before it started")
            if self.requeued and self.request.secret_parameters:
                return self._result(
                    "error",
                    error="its worker died before the container was made and secret parameters "
                    "are never stored; submit the run again",
                )
            self.container = self._create()
        else:
            log.info("execution %s: attaching to existing container", self.execution_id)
        return self._supervise()

    def _create(self) -> Any:
        rt = self.rt
        request = self.request
        self.progress("BUILDING" if request.build else "PULLING", {"host": rt.host_name})
        image = resolve_image(
            rt.docker, rt.redis, rt.settings, request.image, request.build, request.tool_name
        )
        network = None
        if request.network_mode == "session":
            network = sessions.join_session_network(rt, request.session_id)
        config = tool_container_config(
            request,
            execution_id=self.execution_id,
            image=image,
            settings=rt.settings,
            now=time.time(),
            network=network,
        )
        try:
            return containers.create(rt.docker, config)
        except ContainerConflict:
            found = containers.find(rt.docker, self.name)
            if found is None:
                raise
            return found

    def _supervise(self) -> ToolExecutionResult:
        rt = self.rt
        container = self.container
        rt.executions.update(self.execution_id, container_id=container.id)
        if containers.state(container).get("Status") == "created":
            with docker_errors(f"start container {self.name}"):
                container.start()
            container.reload()
        deadline = self._deadline(containers.state(container))
        self.progress(
            "RUNNING",
            {
                "host": rt.host_name,
                "container_id": container.id,
                "tool_name": self.request.tool_name,
            },
        )
        sampler = UsageSampler(container).start()
        live = LiveLog(
            rt.redis,
            self.execution_id,
            rt.settings.log_cap_bytes,
            rt.settings.result_ttl_seconds,
            secrets=self._secrets(),
        )
        self.follower = LogFollower(container, rt.settings.log_cap_bytes, live).start()
        outcome = containers.wait_for_exit(
            container,
            deadline=deadline,
            slice_seconds=rt.settings.wait_slice_seconds,
            should_cancel=lambda: rt.executions.cancel_requested(self.execution_id),
        )
        if outcome.timed_out or outcome.cancelled:
            containers.kill(container)
            containers.wait_for_exit(
                container, deadline=time.monotonic() + 10, slice_seconds=1.0, should_cancel=bool
            )
        usage = sampler.stop()
        return self._collect(outcome, usage)

    def _deadline(self, state: dict[str, Any]) -> float:
        timeout = self.request.resource_limits.timeout_seconds
        started = parse_docker_time(state.get("StartedAt"))
        elapsed = (datetime.now(UTC) - started).total_seconds() if started else 0.0
        return time.monotonic() + timeout - max(0.0, elapsed)

    def _collect(self, outcome: containers.Exit, usage: ToolRunStats) -> ToolExecutionResult:
        container = self.container
        with docker_errors(f"inspect container {self.name}"):
            container.reload()
        state = containers.state(container)
        if self.follower.finish():
            stdout, stderr = self.follower.stdout, self.follower.stderr
        else:  # a follow stream broke: read the engine's log instead
            stdout, stderr = containers.collect_logs(container, self.rt.settings.log_cap_bytes)
        stdout_text = stdout.text()
        exit_code = outcome.exit_code if outcome.exit_code is not None else state.get("ExitCode")
        status, error = _status(outcome, state, exit_code, self.request)
        started = parse_docker_time(state.get("StartedAt"))
        finished = parse_docker_time(state.get("FinishedAt"))
        duration = max(0.0, (finished - started).total_seconds()) if started and finished else None
        return self._result(
            status,
            exit_code=exit_code,
            result=extract_result(stdout_text),
            stdout=stdout_text,
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            error=error,
            started_at=started,
            finished_at=finished,
            duration_seconds=round(duration, 3) if duration is not None else None,
            stats=usage,
            container_id=container.id,
        )

    def _cleanup(self) -> None:
        if not self.request.cleanup or self.container is None:
            return
        try:
            containers.remove(self.rt.docker, self.name)
        except OrchestratorError:
            log.exception("could not remove %s; the janitor will", self.name)

    def _secrets(self) -> list[str]:
        values = self.request.secret_parameters.values()
        return [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in values]

    def _redact(self, result: ToolExecutionResult) -> ToolExecutionResult:
        secrets = [s for s in self._secrets() if len(s) >= 4]
        if not secrets:
            return result
        data = result.model_dump()
        for field in ("stdout", "stderr", "error"):
            for secret in secrets:
                if data[field]:
                    data[field] = data[field].replace(secret, "***")
        if data["result"] is not None:
            text = json.dumps(data["result"])
            for secret in secrets:
                text = text.replace(secret, "***")
            data["result"] = json.loads(text)
        return ToolExecutionResult.model_validate(data)


def _status(
    outcome: containers.Exit, state: dict[str, Any], exit_code: Any, request: ToolExecutionRequest
) -> tuple[str, str | None]:
    if outcome.cancelled:
        return "cancelled", "cancelled by request"
    if outcome.timed_out:
        return "timed_out", (
            f"killed after the {request.resource_limits.timeout_seconds} s timeout"
        )
    if state.get("OOMKilled"):
        return "oom_killed", (
            f"killed for exceeding its {request.resource_limits.memory_mb} MB memory limit"
        )
    if exit_code == 0:
        return "succeeded", None
    return "failed", f"exited with code {exit_code}"
