"""One tool execution, end to end, safe under redelivery.

The lifecycle: take the execution's lease → resolve the image → find or create
the container (named from the execution id) → start it → wait in slices until
exit, deadline or cancellation → collect capped output and usage → store the
result → remove the container in ``finally``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from orchestrator.core import redaction, secrets
from orchestrator.core.output import CappedBuffer, extract_result
from orchestrator.core.specs import (
    check_limits,
    check_network,
    check_request_size,
    check_volumes,
    tool_environment,
    tool_spec,
)
from orchestrator.core.specs import tool_container_name as container_name
from orchestrator.core.types import Container, ContainerSpec, Image
from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    Forbidden,
    ImageNotFound,
    OrchestratorError,
    SessionError,
)
from orchestrator.models import ToolExecutionRequest, ToolExecutionResult, ToolRunStats
from orchestrator.protocol import Kind, parse_labels
from orchestrator.state.images import record_use
from orchestrator.state.logs import LiveLog
from orchestrator.state.quotas import Quotas
from orchestrator.state.registry import ExecutionEntry
from orchestrator.worker import files, networks, volumes, waiting
from orchestrator.worker.exec_run import exec_command, outcome_fields, run_exec
from orchestrator.worker.follow import LogFollower
from orchestrator.worker.images import check_build_request, resolve_image
from orchestrator.worker.runtime import Runtime
from orchestrator.worker.sampling import UsageSampler
from orchestrator.worker.waiting import Exit

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
    # Files sent beside the message stay for a retry or a resumed run, not longer.
    with files.run_blobs(rt, request, keep_for=(DockerUnavailable, DuplicateDelivery)):
        return _run_execution(rt, request, execution_id, progress, requeued)


def _run_execution(
    rt: Runtime,
    request: ToolExecutionRequest,
    execution_id: str,
    progress: Progress,
    requeued: bool,
) -> ToolExecutionResult:
    # Decrypted here, in memory only: the run's spec and its output masking need the values.
    revealed = secrets.reveal_request(request, secrets.settings_keyring(rt.settings))
    check_limits(request.resource_limits, rt.settings)
    check_volumes(request.volumes, rt.settings)
    check_network(request, rt.settings)
    check_request_size(revealed, rt.settings)
    check_build_request(request.build, rt.settings)
    files.check_run_request(request, rt.settings)
    if not rt.leases.acquire(execution_id):
        raise DuplicateDelivery(f"execution {execution_id} is running on another worker")
    try:
        done = rt.executions.result(execution_id)
        if done is not None:
            return done
        with _quota(rt, request, execution_id), _masking(revealed):
            return _Run(rt, revealed, execution_id, progress, requeued).run()
    finally:
        rt.leases.release(execution_id)


@contextmanager
def _masking(request: ToolExecutionRequest) -> Iterator[None]:
    """An error leaving a run with secrets shows none: Celery stores its message and
    traceback text (the result a run returns is masked by :meth:`_Run._redact`)."""
    try:
        yield
    except Exception as exc:
        if request.secret_parameters:
            forms = redaction.secret_forms(redaction.secret_values(request))
            redaction.redact_exception(exc, forms)
        raise


#: Added to a run's timeout in its quota entry's expiry: time to pull or build its image.
QUOTA_IMAGE_SECONDS = 900
#: A run samples its usage only once it has run this long: the engine's stats stream
#: costs CPU that a short run would otherwise share with it (and the engine's first
#: sample of a container takes longer than that to come anyway).
USAGE_DELAY_SECONDS = 0.2


def _quota(
    rt: Runtime, request: ToolExecutionRequest, execution_id: str
) -> AbstractContextManager[None]:
    """The run's place in its session's and host's quotas, for the time it runs.

    A worker that dies mid-run leaves an entry that expires after the run's deadline (and
    is taken over, not counted twice, by the resumed run).

    Raises:
        QuotaExceeded: the session or the host holds too much already; nothing started.
    """
    limits = request.resource_limits
    expires = time.time() + limits.timeout_seconds + rt.settings.grace_seconds
    return Quotas(rt.redis, rt.settings).holding(
        execution_id,
        session_id=request.session_id,
        kind="tool",
        memory_mb=limits.memory_mb,
        expires_at=expires + QUOTA_IMAGE_SECONDS,
    )


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
        #: the container the run uses (a cold one or a pool one), once there is one
        self.container_id: str | None = None
        self.pooled = False
        #: its pool container was made for it (a miss on a busy worker)
        self.made_now = False
        self.exec_started = False
        self.previous = ExecutionEntry()
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
        rt.pool.run_started(self.name)
        try:
            return self._run()
        finally:
            rt.pool.run_ended(self.name)

    def _run(self) -> ToolExecutionResult:
        try:
            result = self._attempt()
        except (ImageNotFound, DockerError, SessionError, ContainerNotFound) as exc:
            if isinstance(exc, DockerUnavailable):
                # The tool container stays for the retry to attach to (the janitor reaps
                # it past its deadline if none comes): removed here once the engine
                # answers again, the retry would run the tool a second time.
                self._abandon()
                if self.pooled:
                    self._cleanup()
                raise
            result = self._result("error", error=str(exc), container_id=self.container_id)
        except BaseException:
            self._abandon()
            self._cleanup()
            raise
        result = self._finish(self._redact(result))
        # Removed only once the result is stored (in the background, behind the runs in
        # progress): a worker killed in between leaves a container the janitor reaps, not a
        # run that a later delivery would start again.
        self._cleanup()
        return result

    def _finish(self, result: ToolExecutionResult) -> ToolExecutionResult:
        """Store the result, unless another attempt of this execution stored one first.

        Two attempts overlap only when this one's lease was taken over (it stalled for
        longer than its worker's liveness mark): the first result stored is the run's, and
        the later attempt, which may have lost the container to the first, returns it.
        """
        rt = self.rt
        if result.status == "error" or rt.leases.lost(self.execution_id):
            stored = rt.executions.result(self.execution_id)
            if stored is not None:
                return stored
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

    def _attempt(self) -> ToolExecutionResult:
        rt = self.rt
        if self.previous.pooled and self.previous.container_id:
            found = rt.engine.find_container(self.previous.container_id)
            self.container_id, self.pooled = (found.id if found else None), True
            return self._result(
                "error",
                error="its worker died during a warm-pool run, whose output cannot be "
                "recovered; it is not run again (at most once): submit it again",
            )
        # A first delivery (the registry knows no attempt of it) does not look for its
        # container: its create finds one of that name (a conflict) if there is one, and
        # the look-up's round trip is saved on every run.
        first = not (self.previous.known or self.requeued)
        container = None if first else self._own(rt.engine.find_container(self.name))
        if container is None:
            if rt.executions.cancel_requested(self.execution_id):
                return self._result("cancelled", error="cancelled before it started")
            if self.previous.container_id:  # an earlier attempt made it: at most once
                return self._result(
                    "error",
                    error=f"its container {self.name} was removed before its result was "
                    "stored (by hand, or by an attempt that lost its lease); it is not run "
                    "again (at most once): submit it again",
                )
            if self.requeued and self.request.secret_parameters:
                return self._result(
                    "error",
                    error="its worker died before the container was made and secret parameters "
                    "are never stored; submit the run again",
                )
            pooled, self.made_now = self._pool_container()
            if pooled is not None:
                try:
                    return self._run_pooled(pooled)
                except (DockerError, ContainerNotFound) as exc:
                    if isinstance(exc, DockerUnavailable) or self.exec_started:
                        raise
                    log.info("pool container unusable (%s); running cold", exc)
                    if self.made_now:  # just made, and no use: none on demand for a while
                        rt.pool.back_off(self.request)
                    rt.pool.discard(pooled)
                    self.container_id, self.pooled, self.made_now = None, False, False
            container = self._create()
        return self._supervise(container)

    def _pool_container(self) -> tuple[str | None, bool]:
        """An idle container of the run's pool, if it has one; else, while other runs are in
        progress on this worker, one made for this run now (True: made now). None: the run
        goes cold (its request cannot use a pool, or keeps its container)."""
        rt = self.rt
        if not self.request.cleanup:
            return None, False
        taken = rt.pool.take(self.request)
        if taken is not None or not rt.pool.busy():
            return taken, False
        made = rt.pool.make_for(self.request)
        return made, made is not None

    def _run_pooled(self, container_id: str) -> ToolExecutionResult:
        """Run the tool in a warm-pool container (its agent runs it), then discard the
        container."""
        rt, request = self.rt, self.request
        self.container_id, self.pooled = container_id, True
        self.progress(
            "RUNNING",
            {"host": rt.host_name, "container_id": container_id, "tool_name": request.tool_name},
        )
        argv = exec_command(request.command, self._image_config())
        # Into the running container, before its agent gets the tool (a running container's
        # file system is mounted already: cheaper than a cold run's write).
        files.write_run_files(rt.engine, container_id, request, rt.settings, rt.redis)
        started = datetime.now(UTC)
        sampler = UsageSampler(rt.engine, container_id, USAGE_DELAY_SECONDS).start()
        outcome = run_exec(
            rt.engine,
            container_id,
            argv,
            tool_environment(request),
            cap_bytes=rt.settings.log_cap_bytes,
            live=self._live_log(),
            deadline=time.monotonic() + request.resource_limits.timeout_seconds,
            slice_seconds=rt.settings.wait_slice_seconds,
            should_cancel=lambda: rt.executions.cancel_requested(self.execution_id),
            on_started=lambda: self._exec_started(container_id),
            stdin=None if request.stdin is None else request.stdin.encode(),
            attached=True,
        )
        finished = datetime.now(UTC)
        usage = sampler.stop()
        # Only a run that failed can have been OOM-killed: a clean one saves the inspect.
        oom = outcome.exit_code != 0 and rt.engine.inspect_container(container_id).oom_killed
        exit_info = Exit(outcome.exit_code, outcome.timed_out, outcome.cancelled)
        status, error = _status(exit_info, oom, outcome.exit_code, request)
        collected = files.collect_run(rt, container_id, request, self.execution_id)
        return self._result(
            status,
            error=error,
            stats=usage,
            container_id=container_id,
            files=collected.files,
            missing_files=collected.missing,
            skipped_files=collected.skipped,
            **outcome_fields(outcome, started, finished),
        )

    def _image_config(self) -> Image | None:
        """The image's entrypoint and cmd, needed only when the request has no command."""
        if self.request.command or not self.request.image:
            return None
        return self.rt.engine.inspect_image(self.request.image)

    def _exec_started(self, container_id: str) -> None:
        # The container is not renamed (a round trip saved): from here on a redelivery
        # finds the run through the registry and must not run the tool again.
        self.exec_started = True
        made = {"made_now": "1"} if self.made_now else {}
        self.rt.executions.update(self.execution_id, container_id=container_id, pooled="1", **made)

    def _live_log(self) -> LiveLog:
        rt = self.rt
        return LiveLog(
            rt.redis,
            self.execution_id,
            rt.settings.live_log_cap_bytes,
            rt.settings.live_log_ttl_seconds,
            secrets=self._secrets(),
        )

    def _create(self) -> Container | None:
        """Create the run's container (its id becomes ``container_id``).

        Returns:
            None when it was created here (it is in state ``created``); the container
            found instead when one of its name is this execution's already (an earlier
            delivery made it).

        Raises:
            Forbidden: the name is taken by a container that is not this execution's.
        """
        rt = self.rt
        request = self.request
        recent = self._recent_image()
        image = recent or self._resolve_image()
        network = None
        if request.network_mode == "session":
            network = networks.join_session_network(rt, request.session_id)
        volume_names = volumes.session_volumes(rt, request.session_id, request.volumes)
        # tool_spec checks the bind mounts again: after the pull or build, right before create.
        spec = tool_spec(
            request,
            execution_id=self.execution_id,
            image=image,
            settings=rt.settings,
            now=time.time(),
            network=network,
            volume_names=volume_names,
        )
        if request.stdin is not None:  # attached (then closed) right before the start
            spec = replace(spec, stdin_open=True)
        try:
            return self._create_named(spec)
        except ImageNotFound:
            if recent is None:
                raise
            # Removed since this worker last saw it: pulled again, as on a first use.
            rt.images.forget(image)
            return self._create_named(replace(spec, image=self._resolve_image()))

    def _create_named(self, spec: ContainerSpec) -> Container | None:
        rt = self.rt
        try:
            self.container_id = rt.engine.create_container_id(spec)
        except ContainerConflict:  # another delivery created it first: run that one
            found = self._own(rt.engine.find_container(self.name))
            if found is None:
                raise
            return found
        if self.request.build is None:
            rt.images.saw(spec.image)
        return None

    def _recent_image(self) -> str | None:
        """The request's image if this worker saw it on its host lately (its use is
        recorded then): the create goes ahead without checking for it first."""
        rt, image = self.rt, self.request.image
        if self.request.build is not None or image is None or not rt.images.recent(image):
            return None
        record_use(rt.redis, rt.host_name, image, time.time())
        return image

    def _resolve_image(self) -> str:
        """The run's image, built or pulled if this host does not have it."""
        rt, request = self.rt, self.request
        return resolve_image(
            rt.engine,
            rt.redis,
            rt.settings,
            request.image,
            request.build,
            request.tool_name,
            lambda state: self.progress(state, {"host": rt.host_name}),
        )

    def _own(self, found: Container | None) -> Container | None:
        """``found`` if it is this execution's tool container; never anyone else's.

        The name comes from the execution id, which the caller chooses: a container that
        merely has the name (unmanaged, or another execution's) is refused untouched.

        Raises:
            Forbidden: the name is taken by a container that is not this execution's.
        """
        if found is None:
            return None
        owner = parse_labels(found.labels)
        if owner.managed and owner.kind == Kind.TOOL and owner.execution == self.execution_id:
            return found
        raise Forbidden(
            f"execution_id: {self.execution_id!r} would run in container {self.name!r}, which "
            "is not this execution's (not managed by the orchestrator, or another run's); "
            "send the run under another task id"
        )

    def _supervise(self, container: Container | None) -> ToolExecutionResult:
        """Start the run's container and follow it to its end.

        Args:
            container: None for the container just created here; else the existing one
                (an earlier delivery's), which is started if it never was and otherwise
                followed from where it is.
        """
        rt, engine = self.rt, self.rt.engine
        if container is not None:
            log.info("execution %s: attaching to existing container", self.execution_id)
            self.container_id = container.id
        container_id = self.container_id
        assert container_id is not None, "created (or found) before it is supervised"
        # Engine calls name the container (not its id): their errors read as they always did.
        rt.executions.update(self.execution_id, container_id=container_id)
        if container is None or container.status == "created":
            # Binds are mounted at start: check them once more, as late as possible.
            volumes.recheck_binds(rt, self.request.volumes)
            files.prepare_run(engine, self.name, self.request, rt.settings, rt.redis)
            engine.start_container(self.name)
            # Started here: our own clocks stand in for an inspect round trip.
            self.started_here = datetime.now(UTC)
            deadline = time.monotonic() + self.request.resource_limits.timeout_seconds
        else:
            deadline = self._deadline(container.started_at)
        self.progress(
            "RUNNING",
            {
                "host": rt.host_name,
                "container_id": container_id,
                "tool_name": self.request.tool_name,
            },
        )
        sampler = UsageSampler(engine, self.name, USAGE_DELAY_SECONDS).start()
        self.follower = LogFollower(
            engine, self.name, rt.settings.log_cap_bytes, self._live_log()
        ).start()
        if container is not None and container.finished:  # a takeover after the tool finished
            exit_code = container.exit_code
            outcome = Exit(exit_code if exit_code is not None else -1)
        else:
            outcome = waiting.wait_for_exit(
                engine,
                self.name,
                deadline=deadline,
                slice_seconds=rt.settings.wait_slice_seconds,
                should_cancel=lambda: rt.executions.cancel_requested(self.execution_id),
            )
        self.finished_here = datetime.now(UTC)
        if outcome.timed_out or outcome.cancelled:
            waiting.kill(engine, self.name)
            waiting.wait_for_exit(
                engine,
                self.name,
                deadline=time.monotonic() + 10,
                slice_seconds=1.0,
                should_cancel=lambda: False,
            )
        usage = sampler.stop()
        return self._collect(outcome, usage)

    def _deadline(self, started: datetime | None) -> float:
        """The monotonic deadline of a container that was started before this attempt."""
        timeout = self.request.resource_limits.timeout_seconds
        elapsed = (datetime.now(UTC) - started).total_seconds() if started else 0.0
        return time.monotonic() + timeout - max(0.0, elapsed)

    def _output(self) -> tuple[CappedBuffer, CappedBuffer]:
        """stdout and stderr as followed live, or as the engine kept them."""
        cap = self.rt.settings.log_cap_bytes
        if not self.follower.finish():  # a follow stream broke: read the engine's log instead
            return waiting.collect_logs(self.rt.engine, self.name, cap)
        stdout, stderr = self.follower.stdout, self.follower.stderr
        if stdout.truncated or stderr.truncated:
            # A long output may rotate the engine's json-file log under a follower, whose
            # stream then ends early: the tail comes from the engine's log, the head (which
            # the rotation dropped there) from the follower.
            kept_out, kept_err = waiting.collect_logs(self.rt.engine, self.name, cap)
            stdout, stderr = stdout.with_tail_of(kept_out), stderr.with_tail_of(kept_err)
        return stdout, stderr

    def _collect(self, outcome: Exit, usage: ToolRunStats) -> ToolExecutionResult:
        engine = self.rt.engine
        clean_exit = self.started_here is not None and outcome.exit_code == 0
        # OOMKilled, the exit code and the times come from an inspect, unless it ran cleanly
        # from our own start (a round trip saved on the common path).
        state = None if clean_exit else engine.inspect_container(self.name)
        stdout, stderr = self._output()
        stdout_text = stdout.text()
        exit_code = outcome.exit_code
        if exit_code is None and state is not None:
            exit_code = state.exit_code
        oom = state is not None and state.oom_killed
        status, error = _status(outcome, oom, exit_code, self.request)
        if state is None:
            started, finished = self.started_here, self.finished_here
        else:
            started, finished = state.started_at, state.finished_at
        duration = max(0.0, (finished - started).total_seconds()) if started and finished else None
        collected = files.collect_run(self.rt, self.name, self.request, self.execution_id)
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
            container_id=self.container_id,
            files=collected.files,
            missing_files=collected.missing,
            skipped_files=collected.skipped,
        )

    def _cleanup(self) -> None:
        if self.container_id is None:
            return
        if self.pooled:  # a pool container serves one run: discard it, off the hot path
            self.rt.pool.discard(self.container_id)
            return
        if self.request.cleanup:
            self.rt.pool.remove_later(self.name)

    def _secrets(self) -> list[str]:
        return redaction.secret_values(self.request)

    def _redact(self, result: ToolExecutionResult) -> ToolExecutionResult:
        return redaction.redact_result(result, self._secrets())


def _status(
    outcome: Exit, oom_killed: bool, exit_code: int | None, request: ToolExecutionRequest
) -> tuple[str, str | None]:
    """The status of a run and its error message (None when it succeeded)."""
    if outcome.cancelled:
        return "cancelled", "cancelled by request"
    if outcome.timed_out:
        return "timed_out", (
            f"killed after the {request.resource_limits.timeout_seconds} s timeout"
        )
    if oom_killed:
        return "oom_killed", (
            f"killed for exceeding its {request.resource_limits.memory_mb} MB memory limit"
        )
    if exit_code == 0:
        return "succeeded", None
    return "failed", f"exited with code {exit_code}"
