"""Relic tasks: start, info, list, stop, remove. Session-scoped calls run on the host that
owns the session; a call that lands elsewhere forwards itself."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Ignore

from orchestrator.errors import InvalidRequest, WrongHost
from orchestrator.models import FileContent, RelicExecRequest, RelicStartRequest, parse_request
from orchestrator.protocol import Task, validate_id
from orchestrator.state import blobs, routing
from orchestrator.worker import files as worker_files
from orchestrator.worker import relic_exec, relics
from tasks.base import SecretTask
from tasks.forwarding import fan_out, forward
from tasks.runtime import get_runtime
from tasks.tools import RETRY


def _relic_id(value: Any) -> str:
    return validate_id("relic_id", value)


@shared_task(bind=True, base=SecretTask, name=Task.RELICS_START.value, **RETRY)
def start(self: Any, request: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Start a relic and wait until healthy; the relic id is this task's id. Returns RelicInfo.

    Secret parameters are handled as a tool run's are (see ``tasks.tools.execute``).
    """
    with self.containing_errors():
        return _start(self, request if request is not None else fields)


def _start(task: Any, request: Any) -> dict[str, Any]:
    req = parse_request(RelicStartRequest, request)
    # The task id is the relic id, chosen by the caller: it reaches registry keys and labels.
    relic_id = _relic_id(task.request.id)
    try:
        info = relics.start_relic_once(get_runtime(), req, relic_id)
    except relics.StartInProgress:
        raise Ignore() from None
    except WrongHost as exc:  # sent on encrypted (SecretTask.apply_async)
        forward(task, exc, [req.model_dump(mode="json")])
    return info.model_dump(mode="json")


@shared_task(bind=True, name=Task.RELICS_INFO.value, **RETRY)
def info(self: Any, relic_id: str) -> dict[str, Any]:
    """The relic's RelicInfo, status read from the engine."""
    _relic_id(relic_id)
    try:
        return relics.relic_info(get_runtime(), relic_id).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id])


@shared_task(bind=True, name=Task.RELICS_STOP.value, **RETRY)
def stop(self: Any, relic_id: str, timeout_seconds: int = 10) -> dict[str, Any]:
    """Stop gracefully, then kill after ``timeout_seconds``. Returns RelicInfo."""
    if not isinstance(timeout_seconds, int) or not 0 <= timeout_seconds <= 600:
        raise InvalidRequest("timeout_seconds: must be an integer from 0 to 600")
    _relic_id(relic_id)
    try:
        rt = get_runtime()
        return relics.stop_relic(rt, relic_id, timeout_seconds).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id, timeout_seconds])


@shared_task(bind=True, name=Task.RELICS_REMOVE.value, **RETRY)
def remove(self: Any, relic_id: str) -> dict[str, Any]:
    """Remove the relic's container. Returns ``{"relic_id", "removed"}``."""
    _relic_id(relic_id)
    try:
        return relics.remove_relic(get_runtime(), relic_id)
    except WrongHost as exc:
        forward(self, exc, [relic_id])


def _file_list(value: Any) -> list[FileContent]:
    if not isinstance(value, list):
        raise InvalidRequest("files: expected a list of FileContent objects")
    return [parse_request(FileContent, item) for item in value]


# SecretTask for its bounded stored arguments: megabytes of files are not kept with the result.
@shared_task(bind=True, base=SecretTask, name=Task.RELICS_PUT_FILES.value, **RETRY)
def put_files(self: Any, relic_id: str, files: Any = None) -> dict[str, Any]:
    """Write files into a relic's container. Returns ``{"relic_id", "written", "bytes"}``."""
    _relic_id(relic_id)
    wanted = _file_list(files)
    try:
        return worker_files.put_relic_files(get_runtime(), relic_id, wanted).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id, [f.model_dump(mode="json") for f in wanted]])


@shared_task(bind=True, name=Task.RELICS_GET_FILES.value, **RETRY)
def get_files(
    self: Any, relic_id: str, paths: Any = None, inline_max_bytes: Any = None, stream: Any = None
) -> dict[str, Any]:
    """Read files from a relic's container (a directory gives its files).

    Returns ``{"relic_id", "files": [FileContent], "missing": [path], "skipped": [...]}``;
    with ``inline_max_bytes``, larger files come beside the reply (see ``state.blobs``),
    with ``stream`` (a blob ref) all on that list, as they are read.
    """
    _relic_id(relic_id)
    if inline_max_bytes is not None and (
        not isinstance(inline_max_bytes, int) or inline_max_bytes < 0
    ):
        raise InvalidRequest("inline_max_bytes: must be a non-negative integer or null")
    if stream is not None and not blobs.is_blob_ref(stream):
        raise InvalidRequest("stream: must be a blob reference (blob:<32 hex digits>) or null")
    try:
        rt = get_runtime()
        read = worker_files.get_relic_files(rt, relic_id, paths, inline_max_bytes, stream)
        return read.model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id, paths, inline_max_bytes, stream])


@shared_task(bind=True, base=SecretTask, name=Task.RELICS_EXEC.value, **RETRY)
def exec_command(self: Any, request: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Run a command in a running relic; the exec id is this task's id. Returns ExecResult.

    Secret parameters are handled as a tool run's are (see ``tasks.tools.execute``); cancel
    with ``orchestrator.tools.cancel`` and the exec id.
    """
    with self.containing_errors():
        return _exec(self, request if request is not None else fields)


def _exec(task: Any, request: Any) -> dict[str, Any]:
    req = parse_request(RelicExecRequest, request)
    # The task id keys the registry and marks the command's processes: the caller chooses it.
    exec_id = validate_id("exec_id", task.request.id)

    def progress(state: str, meta: dict[str, Any]) -> None:
        task.update_state(state=state, meta={"exec_id": exec_id, **meta})

    try:
        result = relic_exec.exec_in_relic(get_runtime(), req, exec_id, progress=progress)
    except relic_exec.DuplicateDelivery:
        raise Ignore() from None
    except WrongHost as exc:  # sent on encrypted (SecretTask.apply_async)
        forward(task, exc, [req.model_dump(mode="json")])
    return result.model_dump(mode="json")


@shared_task(name=Task.RELICS_LIST_HOST.value, **RETRY)
def list_host(session_id: str | None = None) -> list[dict[str, Any]]:
    """Relics on the host that runs this task."""
    if session_id is not None:
        validate_id("session_id", session_id)
    return [r.model_dump(mode="json") for r in relics.local_relics(get_runtime(), session_id)]


@shared_task(name=Task.RELICS_MERGE_LISTS.value)
def merge_lists(replies: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate per-host relic lists, sorted by session and name."""
    merged = [item for reply in replies for item in reply]
    return sorted(merged, key=lambda r: (r["session_id"], r["relic_name"]))


@shared_task(bind=True, name=Task.RELICS_LIST.value)
def list_relics(self: Any, session_id: str | None = None) -> list[dict[str, Any]]:
    """Every relic (of one session when given), from every host that may hold them."""
    if session_id is not None:
        validate_id("session_id", session_id)
    rt = get_runtime()
    owner = routing.session_owner(rt.redis, session_id) if session_id else None
    hosts = [owner] if owner else rt.hosts.live_hosts()
    if hosts == [rt.host_name] or not hosts:
        return list_host(session_id)
    fan_out(self, list_host.si(session_id), hosts, merge_lists.s())
