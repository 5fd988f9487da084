"""One tool execution, end to end, safe under redelivery.

The lifecycle: take the execution's lease → resolve the image → find or create
the container (named from the execution id) → start it → wait in slices until
exit, deadline or cancellation → collect capped output and usage → store the
result → remove the container in ``finally``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from orchestrator.core import redaction
from orchestrator.core.output import extract_result
from orchestrator.core.specs import (
    check_limits,
    check_volumes,
    tool_container_config,
    tool_environment,
)
from orchestrator.core.specs import tool_container_name as container_name
from orchestrator.core.stats import parse_docker_time
from orchestrator.engine import containers
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    ImageNotFound,
    OrchestratorError,
    SessionError,
)
from orchestrator.models import ToolExecutionRequest, ToolExecutionResult, ToolRunStats
from orchestrator.state import sessions
from orchestrator.state.logs import LiveLog, LogFollower
from orchestrator.worker.exec_run import exec_command, run_exec
from orchestrator.worker.images import resolve_image
from orchestrator.worker.runtime import Runtime
from orchestrator.worker.sampling import UsageSampler

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
        self.pooled = False
        self.exec_started = False
        self.previous: dict[str, str] = {}
        self.started_here: datetime | None = None
        self.finished_here: datetime | None = None
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
        self.previous = rt.executions.get(self.execution_id)
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
        except (ImageNotFound, DockerError, SessionError, ContainerNotFound) as exc:
            if isinstance(exc, DockerUnavailable):
                self._abandon()
                raise
            result = self._result("error", error=str(exc), container_id=self._container_id())
        except BaseException:
            self._abandon()
            raise
        finally:
            self._cleanup()
        result = self._redact(result)
        rt.executions.finish(result)
        return result

    def _abandon(self) -> None:
        """This attempt ends with an exception: the task fails, or Celery retries it.

        Either way no worker died, so the reaper must not re-enqueue the execution (it would
        run again beside the retry, or after the failure was reported). A retry registers it
        again when it starts.
        """
        try:
            self.rt.executions.forget(self.execution_id)
        except Exception:  # noqa: BLE001 - Redis is down: the reaper may resume it later
            log.warning("could not drop execution %s from the in-flight set", self.execution_id)

    def _container_id(self) -> str | None:
        return getattr(self.container, "id", None)

    def _attempt(self) -> ToolExecutionResult:
        rt = self.rt
        if self.previous.get("pooled") and self.previous.get("container_id"):
            self.container = containers.find(rt.docker, self.previous["container_id"])
            self.pooled = True
            return self._result(
                "error",
                error="its worker died during a warm-pool run, whose output cannot be "
                "recovered; it is not run again (at most once): submit it again",
            )
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
            pooled = rt.pool.take(self.request) if self.request.cleanup else None
            if pooled is not None:
                try:
                    return self._run_pooled(pooled)
                except (DockerError, ContainerNotFound) as exc:
                    if isinstance(exc, DockerUnavailable) or self.exec_started:
                        raise
                    log.info("pool container unusable (%s); running cold", exc)
                    rt.pool.discard(pooled)
                    self.container, self.pooled = None, False
            self.container = self._create()
        else:
            log.info("execution %s: attaching to existing container", self.execution_id)
        return self._supervise()

    def _run_pooled(self, container: Any) -> ToolExecutionResult:
        """Run the tool with ``exec`` in a warm-pool container, then discard the container."""
        rt, request = self.rt, self.request
        self.container, self.pooled = container, True
        self.progress(
            "RUNNING",
            {"host": rt.host_name, "container_id": container.id, "tool_name": request.tool_name},
        )
        image_config: dict[str, Any] = {}
        if not request.command:
            with docker_errors(f"inspect image {request.image}"):
                image_config = rt.docker.images.get(request.image).attrs.get("Config") or {}
        started = datetime.now(UTC)
        sampler = UsageSampler(container).start()
        outcome = run_exec(
            rt.docker,
            container,
            exec_command(request.command, image_config),
            tool_environment(request),
            cap_bytes=rt.settings.log_cap_bytes,
            live=self._live_log(),
            deadline=time.monotonic() + request.resource_limits.timeout_seconds,
            slice_seconds=rt.settings.wait_slice_seconds,
            should_cancel=lambda: rt.executions.cancel_requested(self.execution_id),
            on_started=self._exec_started,
        )
        finished = datetime.now(UTC)
        usage = sampler.stop()
        state: dict[str, Any] = {}
        if outcome.exit_code != 0:  # only then can it have been OOM-killed
            with docker_errors(f"inspect container {container.id}"):
                container.reload()
            state = containers.state(container)
        exit_info = containers.Exit(outcome.exit_code, outcome.timed_out, outcome.cancelled)
        status, error = _status(exit_info, state, outcome.exit_code, request)
        stdout_text = outcome.stdout.text()
        return self._result(
            status,
            exit_code=outcome.exit_code,
            result=extract_result(stdout_text),
            stdout=stdout_text,
            stderr=outcome.stderr.text(),
            stdout_truncated=outcome.stdout.truncated,
            stderr_truncated=outcome.stderr.truncated,
            error=error,
            started_at=started,
            finished_at=finished,
            duration_seconds=round((finished - started).total_seconds(), 3),
            stats=usage,
            container_id=container.id,
        )

    def _exec_started(self) -> None:
        # The container is not renamed (a round trip saved): from here on a redelivery
        # finds the run through the registry and must not run the tool again.
        self.exec_started = True
        self.rt.executions.update(self.execution_id, container_id=self.container.id, pooled="1")

    def _live_log(self) -> LiveLog:
        rt = self.rt
        return LiveLog(
            rt.redis,
            self.execution_id,
            rt.settings.log_cap_bytes,
            rt.settings.result_ttl_seconds,
            secrets=self._secrets(),
        )

    def _create(self) -> Any:
        rt = self.rt
        request = self.request
        image = resolve_image(
            rt.docker,
            rt.redis,
            rt.settings,
            request.image,
            request.build,
            request.tool_name,
            lambda state: self.progress(state, {"host": rt.host_name}),
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
            # Started here: our own clocks stand in for an inspect round trip.
            self.started_here = datetime.now(UTC)
            deadline = time.monotonic() + self.request.resource_limits.timeout_seconds
        else:
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
        self.follower = LogFollower(container, rt.settings.log_cap_bytes, self._live_log()).start()
        state = containers.state(container)
        if state.get("Status") in ("exited", "dead"):  # a takeover after the tool finished
            outcome = containers.Exit(int(state.get("ExitCode", -1)))
        else:
            outcome = containers.wait_for_exit(
                container,
                deadline=deadline,
                slice_seconds=rt.settings.wait_slice_seconds,
                should_cancel=lambda: rt.executions.cancel_requested(self.execution_id),
            )
        self.finished_here = datetime.now(UTC)
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
        clean_exit = self.started_here is not None and outcome.exit_code == 0
        state: dict[str, Any] = {}
        if not clean_exit:  # OOMKilled, the exit code and the times come from an inspect
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
        if clean_exit:
            started, finished = self.started_here, self.finished_here
        else:
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
        if self.container is None:
            return
        if self.pooled:  # a pool container serves one run: discard it, off the hot path
            self.rt.pool.discard(self.container)
            return
        if not self.request.cleanup:
            return
        try:
            containers.remove(self.rt.docker, self.name)
        except OrchestratorError:
            log.exception("could not remove %s; the janitor will", self.name)

    def _secrets(self) -> list[str]:
        return redaction.secret_values(self.request)

    def _redact(self, result: ToolExecutionResult) -> ToolExecutionResult:
        return redaction.redact_result(result, self._secrets())


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
