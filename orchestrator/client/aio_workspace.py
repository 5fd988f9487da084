"""The async client's commands and files in relics: :class:`AsyncWorkspace`.

The same calls as :meth:`~orchestrator.client.sync.OrchestratorClient.exec_in_relic`,
``put_files`` and ``get_files``, built by :mod:`orchestrator.client.relic_exec` and
:mod:`orchestrator.client.files`; the relic's host is looked up in the publishing thread.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from celery.exceptions import TaskRevokedError

from orchestrator.client import calls
from orchestrator.client import files as file_calls
from orchestrator.client.aio_core import AsyncCore
from orchestrator.client.relic_exec import (
    cancelled_exec,
    exec_call,
    exec_request,
    exec_wait_seconds,
)
from orchestrator.client.resend import Sent
from orchestrator.errors import OrchestratorTimeout
from orchestrator.models import ExecResult, FilesRead, FilesWritten, RelicExecRequest
from orchestrator.state import blob_stream, blobs, collected

__all__ = ["AsyncWorkspace", "AsyncExecHandle"]


class AsyncExecHandle:
    """An exec that was sent; ``id`` is its exec id (cancel it with ``cancel_tool(id)``,
    follow its output with ``follow_logs(id)``)."""

    def __init__(self, client: AsyncCore, sent: Sent, request: RelicExecRequest) -> None:
        self.client = client
        self.sent = sent
        self.id: str = sent.async_result.id
        self.request = request
        self.wait_seconds = exec_wait_seconds(request)

    async def state(self) -> str:
        """The Celery state: PENDING, RUNNING, SUCCESS, FAILURE, REVOKED."""
        return str((await self.client._meta(self.id))["status"])

    async def result(self, timeout: float | None = None) -> ExecResult:
        """Wait for the command to end and return its result (the loop keeps running).

        Args:
            timeout: seconds to wait; None waits its timeout plus a minute.

        Raises:
            OrchestratorTimeout: no result in time (the exec goes on).
            RelicNotFound / Forbidden / LimitExceeded / InvalidRequest: refused; nothing ran.
        """
        wait = self.wait_seconds if timeout is None else timeout
        try:
            data = await self.client._wait(self.sent, wait)
        except TaskRevokedError:
            return cancelled_exec(self.request, self.id)
        return ExecResult.model_validate(data)


class AsyncWorkspace(AsyncCore):
    """Commands and files in relics, and collected files of runs, as coroutines."""

    async def start_exec(
        self, relic_id: str, command: list[str] | str, **options: Any
    ) -> AsyncExecHandle:
        """Send a command to run in a relic and return once sent; ``handle.id`` is the exec id.

        Takes the keywords of :meth:`exec_in_relic` but ``wait_timeout``.
        """
        req = exec_request(relic_id, command, **options)
        payload = self.sync._sealed(req)
        _, sent = await self._send_built(req.relic_id, lambda q: exec_call(req, payload, q))
        return AsyncExecHandle(self, sent, req)

    async def exec_in_relic(
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

        The arguments are those of
        :meth:`~orchestrator.client.sync.OrchestratorClient.exec_in_relic`.

        Raises:
            RelicNotFound / Forbidden / LimitExceeded / InvalidRequest: refused; nothing ran.
            OrchestratorTimeout: no result within ``wait_timeout`` (the command goes on).
        """
        handle = await self.start_exec(
            relic_id,
            command,
            stdin=stdin,
            timeout=timeout,
            environment=environment,
            secret_parameters=secret_parameters,
            working_dir=working_dir,
            session_id=session_id,
        )
        return await handle.result(wait_timeout)

    async def put_files(
        self,
        relic_id: str,
        files: file_calls.Files,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> FilesWritten:
        """Write files into a relic: ``{"/abs/path": bytes or str}`` (or FileContent items).

        Raises:
            InvalidRequest: a bad path, or a path that is a directory in the container.
            LimitExceeded: over ``ORCHESTRATOR_FILES_MAX_*`` (the message names which).
            RelicNotFound: no such relic.
        """
        later = blobs.Deferred(self.sync.redis)  # large files: written once the message is sent
        items = await asyncio.to_thread(file_calls.file_list, files, mode, later.stash)
        call, sent = await self._send_built(
            relic_id, lambda q: file_calls.put_files(relic_id, items, q)
        )
        try:
            await asyncio.to_thread(later.push)  # the worker reads each chunk as it lands
            return call.decode(await self._wait(sent, call.wait(timeout)))
        except OrchestratorTimeout:
            raise  # the call goes on: it still needs them
        except Exception:
            await asyncio.to_thread(later.discard)  # a refused call may have deleted some
            raise

    async def get_files_detailed(
        self, relic_id: str, paths: list[str], timeout: float | None = None
    ) -> FilesRead:
        """Read files or directories from a relic, with what was missing, skipped or cut."""
        read, _ = await self._read_files(relic_id, file_calls.checked_paths(paths), timeout, True)
        return read

    async def _read_files(
        self, relic_id: str, checked: list[str], timeout: float | None, complete: bool
    ) -> tuple[FilesRead, dict[str, bytes]]:
        stream = blob_stream.StreamReader(self.sync.redis, blobs.new_ref())  # read as written
        call, sent = await self._send_built(
            relic_id,
            lambda q: file_calls.get_files(
                relic_id, checked, q, file_calls.INLINE_MAX_BYTES, stream.ref
            ),
        )
        deadline = time.monotonic() + call.wait(timeout)
        try:
            answered = functools.partial(self.sync._answered, sent)
            await asyncio.to_thread(stream.follow, answered, deadline)
            left = max(0.0, deadline - time.monotonic())
            read = call.decode(await self._wait(sent, left))
            await asyncio.to_thread(stream.drain)
        finally:
            await asyncio.to_thread(stream.close)
        other = functools.partial(blobs.take, self.sync.redis)  # files sent beside the reply
        take = file_calls.stream_take(stream.ref, stream.files(), other)
        return read, await asyncio.to_thread(file_calls.file_bytes, read, take, complete)

    async def get_files(
        self, relic_id: str, paths: list[str], timeout: float | None = None
    ) -> dict[str, bytes]:
        """Read files from a relic: ``{path: bytes}``, a directory giving each of its files.

        Raises:
            PathNotFound: a path is missing (``get_files_detailed`` reports instead).
            InvalidRequest: a path asked for is a link or device (not followed or read).
            LimitExceeded: a file is larger than the server lets one call read.
        """
        checked = file_calls.checked_paths(paths)
        read, data = await self._read_files(relic_id, checked, timeout, False)
        file_calls.check_complete(read, checked)
        return data

    async def get_collected_file(self, execution_id: str, path: str) -> bytes:
        """The bytes of a finished run's collected file, also one kept beside its result.

        Raises:
            ExecutionNotFound: no such finished run or file, or it expired with the result.
        """
        current = calls.execution_from_meta(execution_id, await self._meta(execution_id))
        found = file_calls.find_collected(current, execution_id, path)
        if found.ref:  # kept beside the result, in the registry
            return await asyncio.to_thread(collected.load, self.sync.redis, found.ref)
        return found.data()
