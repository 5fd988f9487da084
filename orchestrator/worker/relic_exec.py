"""Commands run in a running relic with ``exec`` (``orchestrator.relics.exec``).

A relic is a session's live container; an exec runs one command in it and returns its
output, exit code and JSON result as a tool run does. What it guarantees:

- It runs on the relic's host (a call that lands elsewhere is forwarded by the task).
- Its processes carry ``ORCHESTRATOR_EXEC_ID=<exec id>`` in their environment. At its
  deadline or on cancellation a second exec finds every process that carries it (and the
  process group each one leads), sends SIGTERM, then SIGKILL after a short grace: the
  command dies, the relic and its other execs go on. That needs ``sh``, ``grep`` and
  ``kill`` in the relic's image (busybox has them).
- At most once: the registry marks the exec started just before the engine starts it. A
  delivery that finds the mark (the reaper's, after its worker died; the broker's, after
  the visibility timeout) never runs the command again: it kills what is left of it and
  answers ``status="error"``, or returns the stored result when there is one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.core import redaction, secrets
from orchestrator.core.specs import secret_environment
from orchestrator.core.types import ExecSpec
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    Forbidden,
    LimitExceeded,
    RelicError,
)
from orchestrator.models import ExecResult, RelicExecRequest, RelicResourceLimits
from orchestrator.protocol import Task
from orchestrator.state import keys
from orchestrator.state import relics as relic_registry
from orchestrator.state.logs import LiveLog
from orchestrator.state.registry import ExecutionEntry, text
from orchestrator.worker.exec_run import ExecOutcome, outcome_fields, run_exec
from orchestrator.worker.execution import DuplicateDelivery
from orchestrator.worker.runtime import Runtime

__all__ = [
    "EXEC_MARKER",
    "KILL_GRACE_SECONDS",
    "KILL_SCRIPT",
    "exec_in_relic",
    "kill_exec",
    "stored_result",
    "DuplicateDelivery",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]

#: The environment variable every process of an exec inherits: how its processes are found.
EXEC_MARKER = "ORCHESTRATOR_EXEC_ID"
#: Seconds between SIGTERM and SIGKILL when an exec is stopped.
KILL_GRACE_SECONDS = 2.0
#: Run in the relic as ``sh -c KILL_SCRIPT orch-kill <exec id> <grace in tenths>``: TERM to
#: every process carrying the exec's marker (and to the group each leads), KILL to what is
#: left after the grace; exits 0 when none is left. Never touches pid 1 (the relic itself).
KILL_SCRIPT = r"""
m="ORCHESTRATOR_EXEC_ID=$1"
found() { grep -lxFsz "$m" /proc/[0-9]*/environ | sed 's#^/proc/##; s#/environ$##'; }
hit() { for p in $(found); do [ "$p" = 1 ] || { kill -s "$1" -- "-$p" || kill -s "$1" "$p"; } 2>/dev/null; done; }
hit TERM
i=0
while [ -n "$(found)" ] && [ "$i" -lt "$2" ]; do sleep 0.1; i=$((i+1)); done
hit KILL
[ -z "$(found)" ]
"""  # noqa: E501 - a shell script, kept readable as such
#: A relic registered before relics recorded their timeout gets the model's default.
DEFAULT_RELIC_TIMEOUT = RelicResourceLimits().timeout_seconds


def _noop(state: str, meta: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class _Target:
    """The relic an exec runs in, as the registry knows it."""

    relic_id: str
    session_id: str
    container: str
    timeout_seconds: int
    #: the variables the relic's own secret parameters became (names only)
    secret_names: tuple[str, ...] = ()


def stored_result(redis: Any, exec_id: str) -> ExecResult | None:
    """The final result of an exec, if one was stored."""
    raw = redis.get(keys.relic_exec_result(exec_id))
    return None if raw is None else ExecResult.model_validate_json(raw)


def exec_in_relic(
    rt: Runtime,
    request: RelicExecRequest,
    exec_id: str,
    *,
    progress: Progress = _noop,
) -> ExecResult:
    """Run ``request.command`` in the relic and return its result (at most once per id).

    Args:
        rt: this worker's runtime.
        request: the validated request; secret values encrypted, or plain from a plain
            Celery client (decrypted here, in memory only).
        exec_id: the Celery task id; keys the registry, the live log and the marker.
        progress: receives the ``RUNNING`` state.

    Returns:
        The result, secrets masked. A command that could not be run (its relic stopped,
        its worker died) has status ``error``.

    Raises:
        RelicNotFound: no such relic.
        Forbidden: ``session_id`` was given and the relic belongs to another session.
        WrongHost / HostUnavailable: the relic lives on another host (the task forwards).
        LimitExceeded: a timeout, stdin or environment above its cap; nothing ran.
        DuplicateDelivery: another worker runs this exec right now.
    """
    pipe = rt.redis.pipeline()
    pipe.get(keys.relic_exec_result(exec_id))
    pipe.hget(keys.relic(request.relic_id), "timeout_seconds")
    raw_done, raw_timeout = pipe.execute()
    if raw_done is not None:  # a redelivery of a finished exec (its relic may be gone by now)
        return ExecResult.model_validate_json(raw_done)
    target = _target(rt, request, text(raw_timeout))
    revealed = secrets.reveal_request(request, secrets.settings_keyring(rt.settings))
    timeout = _check(rt, revealed, target)
    if not rt.leases.acquire(exec_id):
        raise DuplicateDelivery(f"exec {exec_id} is running on another worker")
    try:
        pipe = rt.redis.pipeline()
        pipe.get(keys.relic_exec_result(exec_id))
        pipe.hgetall(keys.execution(exec_id))
        pipe.exists(keys.cancel(exec_id))
        raw_done, raw_entry, cancelled = pipe.execute()
        if raw_done is not None:  # finished by another delivery since the first look
            return ExecResult.model_validate_json(raw_done)
        previous = ExecutionEntry.from_hash(
            {text(k) or "": text(v) or "" for k, v in raw_entry.items()}
        )
        run = _Exec(rt, revealed, exec_id, target, timeout, progress)
        result = run.run(previous, bool(cancelled))
        _store(rt, result)
        return result
    finally:
        rt.leases.release(exec_id)


def _target(rt: Runtime, request: RelicExecRequest, raw_timeout: str | None) -> _Target:
    entry = relic_registry.lookup(rt.redis, request.relic_id)
    if request.session_id is not None and request.session_id != entry.session_id:
        raise Forbidden(
            f"relic_id: relic {request.relic_id!r} belongs to another session than "
            f"{request.session_id!r}"
        )
    rt.require_local(entry.host, f"relic {request.relic_id}")
    timeout = DEFAULT_RELIC_TIMEOUT  # a relic registered before relics recorded theirs
    if raw_timeout is not None and raw_timeout.isdigit():
        timeout = int(raw_timeout)
    return _Target(
        request.relic_id, entry.session_id, entry.container_name, timeout, entry.secret_names
    )


def _relic_secrets(rt: Runtime, target: _Target) -> list[str]:
    """The values of the relic's own secret parameters: a command in it sees them too (it
    shares the relic's environment), so its output masks them as well. One inspect, only
    for a relic started with secrets."""
    if not target.secret_names:
        return []
    try:
        environment = rt.engine.inspect_container(target.container).environment
    except ContainerNotFound:  # nothing runs then: the exec says its relic's container is gone
        return []
    return [environment[name] for name in target.secret_names if environment.get(name)]


def _check(rt: Runtime, request: RelicExecRequest, target: _Target) -> int:
    """The exec's timeout; refuses what breaks a cap before anything runs.

    Raises:
        LimitExceeded: naming the field, the value and the cap.
    """
    settings = rt.settings
    timeout = request.timeout_seconds or min(target.timeout_seconds, settings.max_timeout_seconds)
    if timeout > target.timeout_seconds:
        raise LimitExceeded(
            f"timeout_seconds: {timeout} is above the {target.timeout_seconds} s of relic "
            f"{target.relic_id}'s resource_limits.timeout_seconds (the longest an exec in it "
            "may run); start the relic with a larger one"
        )
    if timeout > settings.max_timeout_seconds:
        raise LimitExceeded(
            f"timeout_seconds: {timeout} is above the server maximum "
            f"{settings.max_timeout_seconds} (ORCHESTRATOR_MAX_TIMEOUT_SECONDS)"
        )
    stdin = len(request.stdin.encode()) if request.stdin is not None else 0
    if stdin > settings.files_max_request_bytes:
        raise LimitExceeded(
            f"stdin: {stdin} bytes, above the server maximum {settings.files_max_request_bytes} "
            "(ORCHESTRATOR_FILES_MAX_REQUEST_BYTES)"
        )
    size = len(json.dumps([request.command, request.environment, request.secret_parameters]))
    if size > settings.max_request_bytes:
        raise LimitExceeded(
            f"environment + secret_parameters + command: {size} bytes in all, above the "
            f"server maximum {settings.max_request_bytes} (ORCHESTRATOR_MAX_REQUEST_BYTES)"
        )
    return timeout


def _store(rt: Runtime, result: ExecResult) -> None:
    """Keep the final result (a later delivery returns it) and close the registry entry."""
    ttl = rt.settings.result_ttl_seconds
    pipe = rt.redis.pipeline()
    pipe.set(keys.relic_exec_result(result.exec_id), result.model_dump_json(), ex=ttl)
    entry = keys.execution(result.exec_id)
    pipe.hset(entry, mapping={"state": "finished", "status": result.status})
    pipe.expire(entry, ttl)  # also when it never started here
    pipe.srem(keys.INFLIGHT, result.exec_id)
    pipe.execute()


def kill_exec(engine: Engine, container: str, exec_id: str, grace_seconds: float) -> bool:
    """Kill every process of exec ``exec_id`` in ``container``; the container goes on.

    Returns:
        True when none of its processes is left; False when some could not be killed or
        the kill could not run (no ``sh``/``grep``/``kill`` in the image, container gone).
    """
    argv = ("sh", "-c", KILL_SCRIPT, "orch-kill", exec_id, str(round(grace_seconds * 10)))
    try:
        stream = engine.exec_start(container, ExecSpec(argv=argv))
        try:
            for _ in stream:
                pass
            return stream.exit_code() == 0
        finally:
            stream.close()
    except DockerUnavailable:
        raise
    except (DockerError, ContainerNotFound) as exc:
        log.info("could not kill exec %s in %s: %s", exec_id, container, exc)
        return False


class _Exec:
    """One exec attempt on this worker."""

    def __init__(
        self,
        rt: Runtime,
        request: RelicExecRequest,
        exec_id: str,
        target: _Target,
        timeout: int,
        progress: Progress,
    ) -> None:
        self.rt = rt
        self.request = request
        self.exec_id = exec_id
        self.target = target
        self.timeout = timeout
        self.progress = progress
        self.secrets = redaction.secret_values(request) + _relic_secrets(rt, target)
        self.killed_cleanly = True

    def _result(self, status: str, **fields: Any) -> ExecResult:
        result = ExecResult(
            exec_id=self.exec_id,
            relic_id=self.target.relic_id,
            session_id=self.target.session_id,
            status=status,
            host=self.rt.host_name,
            **fields,
        )
        return redaction.redact_result(result, self.secrets)

    def run(self, previous: ExecutionEntry, cancelled: bool) -> ExecResult:
        """Run it, unless an earlier delivery may have started it (``previous``: the
        registry's entry) or it was cancelled before it started."""
        if previous.known and previous.container_id:
            return self._after_crash()
        if previous.known and self._secrets_lost():
            return self._result(
                "error",
                error="its worker died before the command started and secret parameters are "
                "never stored; send the exec again",
            )
        if cancelled:
            return self._result("cancelled", error="cancelled before it started")
        # Marked (container_id) before the engine starts it: no later delivery runs it again.
        self.rt.executions.start(
            self.exec_id,
            {
                "task": Task.RELICS_EXEC.value,
                "host": self.rt.host_name,
                "session_id": self.target.session_id,
                "relic_id": self.target.relic_id,
                "request": self.request.redacted(),  # what the reaper re-sends: no secret
                "has_secrets": "1" if self.request.secret_parameters else "",
                "started": str(time.time()),
                "container_id": self.target.container,
            },
        )
        try:
            return self._run()
        except BaseException:
            # No worker died: the reaper must not send it again (a retry registers anew).
            self.rt.executions.forget(self.exec_id)
            raise

    def _secrets_lost(self) -> bool:
        params = self.request.secret_parameters
        return bool(params) and all(value == redaction.MASK for value in params.values())

    def _after_crash(self) -> ExecResult:
        """A delivery of an exec that was started by a worker that died: never run again."""
        gone = kill_exec(self.rt.engine, self.target.container, self.exec_id, KILL_GRACE_SECONDS)
        left = "" if gone else " (some of its processes could not be killed)"
        return self._result(
            "error",
            error="its worker died (or lost the Docker engine) after the command was started; "
            "its output is lost and it is not run again (at most once): what was left of it "
            f"was killed{left}; send it again if it is safe to repeat",
        )

    def _environment(self) -> dict[str, str]:
        env = secret_environment(self.request.secret_parameters)
        env.update(self.request.environment)
        env[EXEC_MARKER] = self.exec_id
        return env

    def _argv(self) -> list[str]:
        command = self.request.command
        return ["sh", "-c", command] if isinstance(command, str) else list(command)

    def _stop(self) -> None:
        self.killed_cleanly = kill_exec(
            self.rt.engine, self.target.container, self.exec_id, KILL_GRACE_SECONDS
        )

    def _run(self) -> ExecResult:
        rt = self.rt
        stdin = self.request.stdin
        self.progress("RUNNING", {"host": rt.host_name, "relic_id": self.target.relic_id})
        started = datetime.now(UTC)
        live = LiveLog(
            rt.redis,
            self.exec_id,
            rt.settings.live_log_cap_bytes,
            rt.settings.live_log_ttl_seconds,
            secrets=self.secrets,
        )
        try:
            outcome = run_exec(
                rt.engine,
                self.target.container,
                self._argv(),
                self._environment(),
                cap_bytes=rt.settings.log_cap_bytes,
                live=live,
                deadline=time.monotonic() + self.timeout,
                slice_seconds=rt.settings.wait_slice_seconds,
                should_cancel=lambda: rt.executions.cancel_requested(self.exec_id),
                stdin=stdin.encode() if stdin is not None else None,
                working_dir=self.request.working_dir,
                stop=self._stop,
            )
        except ContainerNotFound as exc:
            live.close()  # nothing ran: followers of its output stop
            raise RelicError(
                f"relic {self.target.relic_id}: its container is gone ({exc})"
            ) from exc
        except DockerError as exc:
            live.close()
            if isinstance(exc, DockerUnavailable):
                raise
            return self._result("error", error=f"the command could not be run: {exc}")
        return self._outcome(outcome, started, datetime.now(UTC))

    def _outcome(self, outcome: ExecOutcome, started: datetime, finished: datetime) -> ExecResult:
        status, error = self._status(outcome)
        if outcome.errors and status == "succeeded":
            status, error = "error", f"reading its output failed: {outcome.errors[0]}"
        return self._result(status, error=error, **outcome_fields(outcome, started, finished))

    def _status(self, outcome: ExecOutcome) -> tuple[str, str | None]:
        left = "" if self.killed_cleanly else "; some of its processes could not be killed"
        if outcome.cancelled:
            return "cancelled", f"cancelled by request; its processes were killed{left}"
        if outcome.timed_out:
            return "timed_out", f"killed after the {self.timeout} s timeout{left}"
        if outcome.exit_code == 0:
            return "succeeded", None
        if outcome.exit_code is None:
            return "error", "its exit code could not be read"
        return "failed", f"exited with code {outcome.exit_code}"
