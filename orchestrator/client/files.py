"""Files of relics and collected files of tool runs: the calls both clients send and how
their answers are read. Nothing here does I/O; the queue comes from
:func:`orchestrator.client.relic_exec.relic_queue` (the relic's own host)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from pydantic import ValidationError

from orchestrator.client.calls import Call
from orchestrator.core.archive import check_path
from orchestrator.errors import (
    ExecutionNotFound,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    OrchestratorError,
    PathNotFound,
)
from orchestrator.models import (
    FileContent,
    FilesRead,
    FilesWritten,
    ToolExecutionRequest,
    ToolExecutionResult,
    describe_validation_error,
    parse_request,
)
from orchestrator.protocol import Task

__all__ = [
    "FILES_WAIT_SECONDS",
    "file_list",
    "put_files",
    "get_files",
    "checked_paths",
    "collected_file",
    "find_collected",
    "check_complete",
    "file_bytes",
    "stashed",
    "stash_run_files",
    "stream_take",
    "INLINE_MAX_BYTES",
]

#: Default wait of a files call (megabytes each way).
FILES_WAIT_SECONDS = 300.0
#: Files larger than this travel beside the task's message, through Redis
#: (:mod:`orchestrator.state.blobs`): raw bytes instead of base64 in JSON, twice encoded.
INLINE_MAX_BYTES = 64 * 1024

Files = Mapping[str, bytes | str] | Sequence[FileContent]


def file_list(
    files: Files, mode: int | None = None, stash: Callable[[bytes], str] | None = None
) -> list[FileContent]:
    """``{path: bytes | str}`` (or FileContent items) as validated FileContent items.

    Args:
        files: the files; str values travel as UTF-8 text, bytes as base64.
        mode: the permission bits of every file given as a mapping (default 0o644).
        stash: stores bytes beside the message and returns their ref; used for files above
            :data:`INLINE_MAX_BYTES` (None: every file in the message).

    Raises:
        InvalidRequest: a path, mode or content does not validate.
    """
    if isinstance(files, Mapping):
        chosen = 0o644 if mode is None else mode
        try:
            return [_file(path, data, chosen, stash) for path, data in files.items()]
        except ValidationError as exc:
            raise InvalidRequest(f"files: {describe_validation_error(exc)}") from exc
    return stashed([parse_request(FileContent, item) for item in files], stash)


def _file(
    path: str, data: bytes | str, mode: int, stash: Callable[[bytes], str] | None
) -> FileContent:
    if stash is None or len(data) <= INLINE_MAX_BYTES:
        return FileContent.of(path, data, mode)
    raw = data.encode() if isinstance(data, str) else data
    item = FileContent(path=path, mode=mode)  # the path checked before anything is stored
    return item.model_copy(update={"ref": stash(raw), "size": len(raw)})


def stashed(
    files: Sequence[FileContent], stash: Callable[[bytes], str] | None
) -> list[FileContent]:
    """``files`` with each content above :data:`INLINE_MAX_BYTES` stored by ``stash``: the
    item carries its ``ref`` and ``size`` instead (the worker checks the size against its
    caps before it reads a byte). Items with a ``ref`` already are left as they are.

    Raises:
        InvalidRequest: ``content_base64`` is not valid base64.
    """
    if stash is None:
        return list(files)
    out = []
    for item in files:
        inline = item.content_base64 or item.text or ""
        if item.ref is None and len(inline) > INLINE_MAX_BYTES:
            raw = item.data()
            update = {"content_base64": None, "text": None, "ref": stash(raw), "size": len(raw)}
            item = item.model_copy(update=update)
        out.append(item)
    return out


def stash_run_files(
    request: ToolExecutionRequest, stash: Callable[[bytes], str]
) -> ToolExecutionRequest:
    """A tool run whose large ``files`` travel beside its message (see :func:`stashed`)."""
    if not any(len(f.content_base64 or f.text or "") > INLINE_MAX_BYTES for f in request.files):
        return request
    return request.model_copy(update={"files": stashed(request.files, stash)})


def put_files(relic_id: str, files: list[FileContent], queue: str) -> Call[FilesWritten]:
    """Write ``files`` into a relic (Flower shows their count and size, not their bytes)."""
    size = sum(len(item.content_base64 or item.text or "") for item in files)
    argsrepr = f"({relic_id!r}, <{len(files)} files, {size} bytes encoded>)"
    payload = [item.model_dump(mode="json", exclude_none=True) for item in files]
    return Call(
        Task.RELICS_PUT_FILES,
        [relic_id, payload],
        FilesWritten.model_validate,
        FILES_WAIT_SECONDS,
        queue,
        None,
        argsrepr,
    )


def checked_paths(paths: Sequence[str]) -> list[str]:
    """The paths, normalized as the worker does (``//a/./b/`` is ``/a/b``).

    Raises:
        InvalidRequest: a path is relative, has ``..``, NUL, or is ``/``.
    """
    if isinstance(paths, str):
        raise InvalidRequest("paths: expected a list of paths, not one string")
    return [check_path(f"paths[{i}]", path) for i, path in enumerate(paths)]


def get_files(
    relic_id: str,
    paths: Sequence[str],
    queue: str,
    inline_max_bytes: int | None = None,
    stream: str | None = None,
) -> Call[FilesRead]:
    """Read ``paths`` (files or directories, checked already) from a relic; files above
    ``inline_max_bytes`` come beside the reply (see :func:`file_bytes`), all in it by
    default; with ``stream``, on that list as the worker reads them (see
    :class:`~orchestrator.state.blob_stream.StreamReader`)."""
    args: list[object] = [relic_id, list(paths), inline_max_bytes]
    if stream is not None:
        args.append(stream)
    return Call(Task.RELICS_GET_FILES, args, FilesRead.model_validate, FILES_WAIT_SECONDS, queue)


def stream_take(
    stream: str, files: Iterable[bytes], other: Callable[[str], bytes]
) -> Callable[[str], bytes]:
    """A ``take`` for :func:`file_bytes`: the files of ``stream``, in order, for its ref;
    ``other`` for any other ref.

    Raises (when called):
        NotFound: the stream held fewer files than the reply names.
    """
    pending = iter(files)

    def take(ref: str) -> bytes:
        if ref != stream:
            return other(ref)
        data = next(pending, None)
        if data is None:
            raise NotFound(f"ref: {ref}: the stream beside the reply ended early")
        return data

    return take


def find_collected(result: object, execution_id: str, path: str) -> FileContent:
    """The collected file ``path`` of a finished run's result.

    Raises:
        ExecutionNotFound: the run has not finished, or collected no such file.
    """
    if not isinstance(result, ToolExecutionResult):
        raise ExecutionNotFound(f"execution {execution_id}: not finished (or unknown)")
    found = result.collected(path)
    if found is not None:
        return found
    raise ExecutionNotFound(f"execution {execution_id}: no collected file {path!r}")


def collected_file(execution_id: str, path: str) -> Call[FileContent]:
    """One collected file of a finished run, its bytes included (any worker answers)."""
    return Call(Task.TOOLS_COLLECTED_FILE, [execution_id, path], FileContent.model_validate)


def file_bytes(
    read: FilesRead, take: Callable[[str], bytes], complete: bool = True
) -> dict[str, bytes]:
    """``{path: bytes}`` of every file read, taking those sent beside the reply.

    With ``complete``, the reply's items are completed in place (``content_base64``, no
    ``ref``), as if every file had come in it.
    """
    data: dict[str, bytes] = {}
    for index, item in enumerate(read.files):
        if item.ref is None:
            data[item.path] = item.data()
            continue
        data[item.path] = _sized(item, take(item.ref))
        if not complete:
            continue
        read.files[index] = FileContent.of(
            item.path, data[item.path], item.mode, size=item.size, truncated=item.truncated
        )
    return data


def _sized(item: FileContent, data: bytes) -> bytes:
    """``data``, once its length is the one the reply says (all of the file unless cut).

    Raises:
        OrchestratorError: it is not (the call was retried midway, or a ref was reused).
    """
    size = item.size
    if size is not None and (len(data) > size or (not item.truncated and len(data) != size)):
        raise OrchestratorError(
            f"{item.path}: {len(data)} bytes came beside the reply, which says {size}; "
            "read it again"
        )
    return data


def check_complete(read: FilesRead, asked: Sequence[str]) -> None:
    """Nothing to say if the read is complete, else an error saying what is not.

    Members of a directory that are not regular files (links, devices) may be left out.

    Raises:
        PathNotFound: a path asked for is missing.
        InvalidRequest: a path asked for is a link or a device (not followed, not read).
        LimitExceeded: a file was cut at the server's cap (naming the setting).
    """
    if read.missing:
        raise PathNotFound(f"paths: not in the container: {', '.join(read.missing)}")
    refused = [s for s in read.skipped if s.path in asked]
    if refused:
        raise InvalidRequest("; ".join(f"{s.path}: {s.reason}" for s in refused))
    cut = [item.path for item in read.files if item.truncated]
    if cut:
        raise LimitExceeded(
            f"{', '.join(cut)}: larger than the server lets one call read "
            "(ORCHESTRATOR_FILES_MAX_FILE_BYTES / _FILES_MAX_REQUEST_BYTES); use "
            "get_files_detailed for the part that came"
        )
