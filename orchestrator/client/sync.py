"""The public Python API: :class:`OrchestratorClient` and :class:`AsyncOrchestratorClient`.

Clients enqueue tasks by name over Celery; they import no worker code and no
docker. Requests are validated here first, so bad input fails at once with
:class:`~orchestrator.errors.InvalidRequest` and nothing is sent.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from orchestrator.client import calls, publish
from orchestrator.client import files as file_calls
from orchestrator.client.backend import close_app
from orchestrator.client.calls import Call, ExecutionProgress, RunHandle, no_result
from orchestrator.client.config import client_config
from orchestrator.client.relic_exec import ExecHandle, exec_call, exec_request, relic_queue
from orchestrator.client.resend import LostMessages, Sent
from orchestrator.core import secrets
from orchestrator.errors import OrchestratorTimeout
from orchestrator.models import (
    AggregateStats,
    CleanupReport,
    ContainerStats,
    ExecResult,
    FilesRead,
    FilesWritten,
    RelicExecRequest,
    RelicInfo,
    RelicStartRequest,
    ToolExecutionRequest,
    ToolExecutionResult,
    parse_request,
)
from orchestrator.protocol import ROUTED_QUEUES
from orchestrator.settings import Settings
from orchestrator.state import blob_stream, blobs, collected, keys
from orchestrator.state.logs import follow_live, read_live
from orchestrator.state.redis_conn import broker_probe, redis_client
from orchestrator.state.registry import HostRegistry
from orchestrator.state.routing import queue_for

__all__ = ["OrchestratorClient", "ExecutionHandle", "ExecutionProgress"]

T = TypeVar("T")
FINAL_CELERY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

#: Longest wait on the result backend's notification before the stored result is read again.
RESULT_RECHECK_SECONDS = 2.0


def _unwrap(
    async_result: AsyncResult,
    timeout: float | None,
    between_slices: Callable[[], object] | None = None,
) -> Any:
    """Wait for a task's result, ``timeout`` seconds at most (``None``: for ever).

    Celery's Redis backend announces results over pub/sub. A result published while the
    client's pub/sub connection is being re-established (Redis restarted) is never announced
    again, so the wait is cut into slices and each new slice starts by reading the stored
    result itself: a missed announcement costs at most one slice instead of the whole wait.
    ``between_slices`` runs after each slice that ended without a result.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = RESULT_RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
        try:
            return async_result.get(
                timeout=max(0.0, min(left, RESULT_RECHECK_SECONDS)),
                propagate=True,
                disable_sync_subtasks=False,
            )
        except CeleryTimeout as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise no_result(async_result.id, timeout) from exc
            if between_slices is not None:
                between_slices()


class ExecutionHandle(RunHandle):
    """A tool execution that was enqueued; ``id`` is its execution id.

    ``wait_seconds`` is how long :meth:`result` waits by default: the run's
    ``timeout_seconds`` plus the ``client_wait_slack_seconds`` setting.
    """

    def __init__(
        self,
        client: OrchestratorClient,
        sent: Sent,
        tool_name: str,
        session_id: str,
        wait_seconds: float,
    ) -> None:
        super().__init__(sent, tool_name, session_id, wait_seconds)
        self.client = client
        self.async_result = sent.async_result

    @property
    def state(self) -> str:
        """The Celery state: PENDING, STARTED, PULLING, BUILDING, RUNNING, SUCCESS, ..."""
        return str(self.async_result.state)

    def result(self, timeout: float | None = None) -> ToolExecutionResult:
        """Wait for the run to finish and return its result.

        Args:
            timeout: seconds to wait; None waits :attr:`wait_seconds`.

        Raises:
            OrchestratorTimeout: no result in time (the run goes on; ask again by ``id``).
            InvalidRequest: the worker refused the request.
        """
        try:
            data = self.client._wait(self.sent, self._wait_for(timeout))
        except TaskRevokedError:
            return self._cancelled()
        return ToolExecutionResult.model_validate(data)


class OrchestratorClient:
    """Synchronous client; ``with OrchestratorClient() as client:`` closes its connections.

    Every call that waits takes ``timeout`` (seconds); None means the call's finite default:
    60 s for reads, 120 s to stop or remove a relic, 300 s for cleanups, and for
    :meth:`run_tool` and :meth:`start_relic` the request's own limit plus the
    ``client_wait_slack_seconds`` setting. A wait that runs out raises
    :class:`~orchestrator.errors.OrchestratorTimeout` naming the task, which goes on.

    Args:
        settings: connections; read from ``ORCHESTRATOR_*`` variables when omitted.
        app: an existing Celery app to send through (its configuration is used as is).
    """

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._owns_app = app is None
        if app is None:
            app = Celery("orchestrator-client", set_as_current=False)
            app.conf.update(client_config(self.settings))
        self.app = app
        key = self.settings.secret_key
        self._keyring = secrets.keyring(key.get_secret_value() if key is not None else None)
        self._redis: Any = None
        self._lost: LostMessages | None = None
        if self.settings.broker_url.startswith(("redis://", "rediss://")):
            self._lost = LostMessages(app, broker_probe(self.settings.broker_url))

    @property
    def redis(self) -> Any:
        """The registry's Redis client (for routing and live logs)."""
        if self._redis is None:
            self._redis = redis_client(self.settings)
        return self._redis

    def _send(self, name: str, args: list[Any], queue: str | None = None, **options: Any) -> Sent:
        epoch = self._lost.epoch() if self._lost is not None else ""
        async_result = publish.send_task(self.app, str(name), args, queue=queue, **options)
        return Sent(
            name=name,
            args=args,
            options={**options, "queue": queue},
            async_result=async_result,
            queues=(queue,) if queue else ROUTED_QUEUES,
            epoch=epoch,
        )

    def _sealed(
        self, req: ToolExecutionRequest | RelicStartRequest | RelicExecRequest
    ) -> dict[str, Any]:
        """The request as sent: JSON with every secret value encrypted.

        Raises:
            Forbidden: the request has secret values and no ``ORCHESTRATOR_SECRET_KEY`` is
                set (unless ``ORCHESTRATOR_DEV_ALLOW_PLAINTEXT_SECRETS``): nothing is sent.
        """
        return secrets.seal_payload(
            req.model_dump(mode="json"), self._keyring, self.settings.dev_allow_plaintext_secrets
        )

    def _run_stash(self, data: bytes) -> str:
        """Store a tool run's file beside its message, for as long as its result lives."""
        return blobs.put(self.redis, data, self.settings.result_ttl_seconds)

    def _send_call(self, call: Call[Any]) -> Sent:
        """Send ``call``, to its session's host when it names a session."""
        queue = call.queue
        if call.session_id is not None and queue is not None:
            queue = queue_for(self.redis, call.session_id, queue)
        options = {} if call.argsrepr is None else {"argsrepr": call.argsrepr}
        return self._send(call.task, call.args, queue=queue, **options)

    def _wait(self, sent: Sent, timeout: float | None) -> Any:
        """Wait for a sent task's result, sending it again if a restarted broker lost it."""
        lost = self._lost
        check = None if lost is None else functools.partial(lost.check, sent)
        return _unwrap(sent.async_result, timeout, check)

    def _send_request(self, name: str, payload: dict[str, Any], queue: str) -> Sent:
        """Send a sealed request to ``queue`` as it is, its argsrepr masked and bounded."""
        return self._send_call(calls._sealed_call(name, payload, dict, 0, queue, None))

    def _run(self, call: Call[T], timeout: float | None) -> T:
        """Send ``call``, wait ``timeout`` (None: its default) and decode the answer."""
        return call.decode(self._wait(self._send_call(call), call.wait(timeout)))

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- tools ---------------------------------------------------------------------------

    def execute_tool(self, request: ToolExecutionRequest | dict[str, Any]) -> ExecutionHandle:
        """Enqueue a tool run and return at once; ``handle.id`` is the execution id.

        Secret parameters are encrypted with ``ORCHESTRATOR_SECRET_KEY`` before they leave.

        Raises:
            InvalidRequest: the request does not validate.
            Forbidden: it has secret parameters and no key is set (see :meth:`_sealed`).
        """
        req = parse_request(ToolExecutionRequest, request)
        req = file_calls.stash_run_files(req, self._run_stash)  # large files go beside
        call = calls.execute_tool(req, self._sealed(req), self.settings.client_wait_slack_seconds)
        sent = self._send_call(call)
        return ExecutionHandle(self, sent, req.tool_name, req.session_id, call.wait_seconds)

    def run_tool(
        self, request: ToolExecutionRequest | dict[str, Any], timeout: float | None = None
    ) -> ToolExecutionResult:
        """Enqueue a tool run and wait for its result.

        Args:
            request: the run.
            timeout: seconds to wait; None waits the run's ``timeout_seconds`` plus the
                ``client_wait_slack_seconds`` setting.

        Raises:
            OrchestratorTimeout: no result in time; the run goes on.
        """
        return self.execute_tool(request).result(timeout=timeout)

    def cancel_tool(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancel a run on any host: ``{"execution_id", "cancelled", "status"}`` (30 s)."""
        return self._run(calls.cancel_tool(execution_id), timeout)

    def get_execution(self, execution_id: str) -> ToolExecutionResult | ExecutionProgress:
        """The final result, or an ExecutionProgress while the run is queued or running."""
        meta = self.app.backend.get_task_meta(execution_id)
        return calls.execution_from_meta(execution_id, meta)

    def get_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` of a run (what has been captured so far while it runs)."""
        current = self.get_execution(execution_id)
        if isinstance(current, ToolExecutionResult):
            return {"stdout": current.stdout, "stderr": current.stderr}
        return read_live(self.redis, execution_id)

    def follow_logs(
        self, execution_id: str, idle_rounds: int | None = None, block_ms: int = 1000
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(stream, text)`` chunks of a run's output as it prints them, until it ends.

        Args:
            execution_id: whose output to follow.
            idle_rounds: stop after this many reads that found nothing (None: until the end).
            block_ms: how long one read waits for new output.
        """
        yield from follow_live(self.redis, execution_id, block_ms=block_ms, idle_rounds=idle_rounds)

    def live_logs(self, execution_id: str) -> dict[str, str]:
        """``{"stdout", "stderr"}`` published live so far (also while the run goes on)."""
        return read_live(self.redis, execution_id)

    def has_live_logs(self, execution_id: str) -> bool:
        """True while a run's live output stream is kept (it expires with the results)."""
        return bool(self.redis.exists(keys.logs(execution_id)))

    # -- the registry, read-only: what the CLI's health checks show --------------------

    def ping_registry(self) -> None:
        """Check that the registry's Redis answers (raises redis-py's errors when not)."""
        self.redis.ping()

    def live_hosts(self) -> list[str]:
        """Docker hosts that have a live worker (a fresh heartbeat), sorted."""
        return HostRegistry(self.redis, self.settings.host_ttl_seconds).live_hosts()

    def host_heartbeat(self, host_name: str) -> dict[str, Any] | None:
        """The last heartbeat of a host's worker (``seen_at``, queue...), or None."""
        return HostRegistry(self.redis, self.settings.host_ttl_seconds).info(host_name)

    def janitor_last_run(self) -> dict[str, Any] | None:
        """The summary of the janitor's last pass (``at``, ``hosts``...), or None.

        Raises:
            ValueError: the stored summary is not readable JSON.
        """
        raw = self.redis.get(keys.JANITOR_LAST_RUN)
        if raw is None:
            return None
        summary = json.loads(raw)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary

    # -- relics --------------------------------------------------------------------------

    def start_relic(
        self, request: RelicStartRequest | dict[str, Any], timeout: float | None = None
    ) -> RelicInfo:
        """Start a relic and wait until it is healthy.

        Secret parameters are encrypted with ``ORCHESTRATOR_SECRET_KEY`` before they leave.

        Args:
            request: the relic.
            timeout: seconds to wait; None waits its ``health_timeout_seconds`` plus the
                ``client_wait_slack_seconds`` setting.

        Raises:
            InvalidRequest: the request does not validate.
            Forbidden: it has secret parameters and no key is set (see :meth:`_sealed`).
            OrchestratorTimeout: not started in time; the start goes on.
        """
        req = parse_request(RelicStartRequest, request)
        call = calls.start_relic(req, self._sealed(req), self.settings.client_wait_slack_seconds)
        return call.decode(self._wait(self._send_call(call), call.wait(timeout)))

    def get_relic(self, relic_id: str, timeout: float | None = None) -> RelicInfo:
        """A relic's current info (status kept true to the engine)."""
        return self._run(calls.get_relic(relic_id), timeout)

    def list_relics(
        self, session_id: str | None = None, timeout: float | None = None
    ) -> list[RelicInfo]:
        """Every relic, or those of one session."""
        return self._run(calls.list_relics(session_id), timeout)

    def stop_relic(self, relic_id: str, timeout: float | None = None) -> RelicInfo:
        """Stop a relic gracefully (then kill after its grace period); waits 120 s."""
        return self._run(calls.stop_relic(relic_id), timeout)

    def remove_relic(self, relic_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Remove a relic's container: ``{"relic_id", "removed"}``; waits 120 s."""
        return self._run(calls.remove_relic(relic_id), timeout)

    def start_exec(self, relic_id: str, command: list[str] | str, **options: Any) -> ExecHandle:
        """Send a command to run in a relic and return at once; ``handle.id`` is the exec id.

        Takes the keywords of :meth:`exec_in_relic` but ``wait_timeout``.
        """
        req = exec_request(relic_id, command, **options)
        queue = relic_queue(self.redis, req.relic_id)
        return ExecHandle(self, self._send_call(exec_call(req, self._sealed(req), queue)), req)

    def exec_in_relic(
        self,
        relic_id: str,
        command: list[str] | str,
        *,
        stdin: str | bytes | None = None,
        timeout: int | None = 60,
        environment: dict[str, str] | None = None,
        secret_parameters: dict[str, Any] | None = None,
        working_dir: str | None = None,
        session_id: str | None = None,
        wait_timeout: float | None = None,
    ) -> ExecResult:
        """Run a command in a running relic and return its result.

        Args:
            relic_id: the relic.
            command: an argv, or a string run by ``sh -c``.
            stdin: text given to its standard input.
            timeout: its time limit in seconds (at most the relic's
                ``resource_limits.timeout_seconds``; None: exactly that); past it the command's
                processes are killed, the relic goes on.
            environment: extra environment variables.
            secret_parameters: environment variables encrypted on the way, masked in the result.
            working_dir: where it runs (absolute path in the container).
            session_id: when given, the relic must belong to this session.
            wait_timeout: seconds to wait for the result (None: ``timeout`` plus a minute).

        Raises:
            RelicNotFound / Forbidden / LimitExceeded / InvalidRequest: refused; nothing ran.
            OrchestratorTimeout: no result within ``wait_timeout`` (the command goes on).
        """
        handle = self.start_exec(
            relic_id,
            command,
            stdin=stdin,
            timeout=timeout,
            environment=environment,
            secret_parameters=secret_parameters,
            working_dir=working_dir,
            session_id=session_id,
        )
        return handle.result(wait_timeout)

    # -- files (orchestrator/client/files.py) ------------------------------------------------

    def put_files(
        self,
        relic_id: str,
        files: file_calls.Files,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> FilesWritten:
        """Write files into a relic: ``{"/abs/path": bytes or str}`` (or FileContent items).

        Missing directories are made (0755); ``mode`` (default 0o644) applies to every file
        of a mapping. Returns what was written (``written`` paths, ``bytes``).

        Raises:
            InvalidRequest: a bad path, or a path that is a directory in the container.
            LimitExceeded: over ``ORCHESTRATOR_FILES_MAX_*`` (the message names which).
            RelicNotFound: no such relic.
        """
        later = blobs.Deferred(self.redis)  # large files: written once the message is sent
        items = file_calls.file_list(files, mode, later.stash)
        call = file_calls.put_files(relic_id, items, relic_queue(self.redis, relic_id))
        sent = self._send_call(call)
        try:
            later.push()  # the worker reads each chunk as it lands
            return call.decode(self._wait(sent, call.wait(timeout)))
        except OrchestratorTimeout:
            raise  # the call goes on: it still needs them
        except Exception:
            later.discard()  # a refused call may have deleted them before all were written
            raise

    def get_files_detailed(
        self, relic_id: str, paths: list[str], timeout: float | None = None
    ) -> FilesRead:
        """Read files or directories from a relic, with what was missing, skipped or cut:
        ``files`` (FileContent: ``data()``, ``mode``, ``size``, ``truncated``), ``missing``
        and ``skipped`` (links, devices and pipes are never followed or read)."""
        read, _ = self._read_files(relic_id, file_calls.checked_paths(paths), timeout, True)
        return read

    def _read_files(
        self, relic_id: str, checked: list[str], timeout: float | None, complete: bool
    ) -> tuple[FilesRead, dict[str, bytes]]:
        queue = relic_queue(self.redis, relic_id)
        stream = blob_stream.StreamReader(self.redis, blobs.new_ref())  # read as the worker writes
        call = file_calls.get_files(
            relic_id, checked, queue, file_calls.INLINE_MAX_BYTES, stream.ref
        )
        deadline = time.monotonic() + call.wait(timeout)
        sent = self._send_call(call)
        try:
            stream.follow(functools.partial(self._answered, sent), deadline)
            read = call.decode(self._wait(sent, max(0.0, deadline - time.monotonic())))
            stream.drain()
        finally:
            stream.close()
        other = functools.partial(blobs.take, self.redis)
        take = file_calls.stream_take(stream.ref, stream.files(), other)
        return read, file_calls.file_bytes(read, take, complete)

    def _answered(self, sent: Sent) -> bool:
        """True once ``sent`` has a result (it is sent again if a restarted broker lost it)."""
        if self._lost is not None:
            self._lost.check(sent)
        return bool(sent.async_result.ready())

    def get_files(
        self, relic_id: str, paths: list[str], timeout: float | None = None
    ) -> dict[str, bytes]:
        """Read files from a relic: ``{path: bytes}``, a directory giving each of its files.

        Raises:
            PathNotFound: a path is missing (``get_files_detailed`` reports instead).
            InvalidRequest: a path asked for is a link or device (not followed or read).
            LimitExceeded: a file is larger than the server lets one call read.
        """
        checked = file_calls.checked_paths(paths)
        read, data = self._read_files(relic_id, checked, timeout, False)
        file_calls.check_complete(read, checked)
        return data

    def get_collected_file(self, execution_id: str, path: str) -> bytes:
        """The bytes of a finished run's collected file, also one kept beside its result
        (read from Redis: ``orchestrator.tools.collected_file`` does it for other clients).

        Raises:
            ExecutionNotFound: no such finished run or file, or it expired with the result.
        """
        result = self.get_execution(execution_id)
        found = file_calls.find_collected(result, execution_id, path)
        return collected.load(self.redis, found.ref) if found.ref else found.data()

    # -- stats, sessions, cleanup -----------------------------------------------------------

    def container_stats(self, container: str, timeout: float | None = None) -> ContainerStats:
        """Stats of one container by container id, execution id or relic id."""
        return self._run(calls.container_stats(container), timeout)

    def stats(self, timeout: float | None = None) -> AggregateStats:
        """Stats of every managed container on every live host."""
        return self._run(calls.stats(), timeout)

    def touch_session(
        self, session_id: str, extend_seconds: float = 3600, timeout: float | None = None
    ) -> dict[str, Any]:
        """Keep a session alive: ``{"session_id", "expires_at"}``."""
        return self._run(calls.touch_session(session_id, extend_seconds), timeout)

    def cleanup_session(
        self, session_id: str, force: bool = True, timeout: float | None = None
    ) -> CleanupReport:
        """Stop and remove every container, volume and network of a session; waits 300 s."""
        return self._run(calls.cleanup_session(session_id, force), timeout)

    def cleanup_networks(self, timeout: float | None = None) -> dict[str, Any]:
        """Remove managed networks that have no containers: ``{"removed", "errors"}`` (300 s)."""
        return self._run(calls.cleanup_networks(), timeout)

    def close(self) -> None:
        """Close the connections: registry, broker and result backend (of an app it made)."""
        if self._redis is not None:
            self._redis.close()
        if self._lost is not None:
            self._lost.broker.close()
        if self._owns_app:
            close_app(self.app)
