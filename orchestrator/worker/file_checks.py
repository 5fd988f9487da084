"""The checks of files going into containers, before any is written: paths, count, and
sizes against the server's caps (``ORCHESTRATOR_FILES_MAX_FILE_BYTES``,
``_FILES_MAX_REQUEST_BYTES``, ``_FILES_MAX_COUNT``), the sizes that files sent beside the
message declare checked before any of their bytes is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestrator.core import archive
from orchestrator.errors import InvalidRequest, LimitExceeded, NotFound
from orchestrator.models import FileContent, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import blobs

__all__ = ["Load", "Checked", "check_files", "check_paths", "check_run_request", "size_of"]

#: reads a file sent beside the message: (ref, most bytes it may hold, the size it
#: declares) -> its chunks
Load = Callable[[str, int, int | None], Sequence[bytes]]
#: a file to write: (path, its bytes as one buffer or as chunks in order, mode)
Checked = tuple[str, bytes | Sequence[bytes], int]


def check_files(
    files: Sequence[FileContent],
    settings: Settings,
    *,
    extra_bytes: int = 0,
    field: str = "files",
    load: Load | None = None,
) -> list[Checked]:
    """The files to write, checked: paths, count and sizes.

    Sizes declared by files sent beside the message (``ref`` and ``size``) are checked
    before any is read; each is then read up to the per-file cap and no further.

    Args:
        files: the request's files.
        settings: the server's caps.
        extra_bytes: bytes the same request sends otherwise (a tool's stdin).
        field: the request field, first in every message.
        load: reads the bytes of a file sent beside the message; None: refs are refused.

    Raises:
        InvalidRequest: a bad or repeated path, a bad ref, a size that is not the file's.
        LimitExceeded: too many files, a file or all of them too large (naming the setting).
    """
    paths = _paths(files, settings, field)
    _declared(files, paths, settings, field, extra_bytes, refs=load is not None)
    checked: list[Checked] = []
    total = _within(field, extra_bytes, settings)
    for index, item in enumerate(files):
        data: bytes | Sequence[bytes]
        if item.ref is None or load is None:
            data = item.data()
        else:
            data = _loaded(item, load, settings, f"{field}[{index}]", paths[index])
        total = _counted(field, index, paths[index], size_of(data), total, settings)
        checked.append((paths[index], data, item.mode))
    return checked


def _paths(files: Sequence[FileContent], settings: Settings, field: str) -> list[str]:
    """The files' checked paths (count, each path, none twice)."""
    if len(files) > settings.files_max_count:
        raise LimitExceeded(
            f"{field}: {len(files)} files, above the server maximum {settings.files_max_count} "
            "(ORCHESTRATOR_FILES_MAX_COUNT)"
        )
    paths = [archive.check_path(f"{field}[{i}].path", item.path) for i, item in enumerate(files)]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise InvalidRequest(f"{field}: paths given twice: {', '.join(repeated)}")
    return paths


def _declared(
    files: Sequence[FileContent],
    paths: Sequence[str],
    settings: Settings,
    field: str,
    extra_bytes: int,
    *,
    refs: bool,
) -> int:
    """``extra_bytes`` plus the sizes the files sent beside the message declare, each and
    all checked against the caps (before any of them is read)."""
    total = extra_bytes
    for index, item in enumerate(files):
        if item.ref is None:
            continue
        if not refs:
            raise InvalidRequest(
                f"{field}[{index}].ref: give content_base64 or text here, not a reference"
            )
        if not blobs.is_blob_ref(item.ref):
            raise InvalidRequest(
                f"{field}[{index}].ref: {item.ref!r} is not a file reference this system made"
            )
        if item.size is not None:
            total = _counted(field, index, paths[index], item.size, total, settings)
    return total


def _counted(field: str, index: int, path: str, size: int, total: int, settings: Settings) -> int:
    """``total + size``, once the file and the new total are within the caps."""
    if size > settings.files_max_file_bytes:
        raise LimitExceeded(
            f"{field}[{index}]: {path} has {size} bytes, above the server maximum "
            f"{settings.files_max_file_bytes} (ORCHESTRATOR_FILES_MAX_FILE_BYTES)"
        )
    return _within(field, total + size, settings)


def _within(field: str, total: int, settings: Settings) -> int:
    """``total``, once within the request cap."""
    if total > settings.files_max_request_bytes:
        raise LimitExceeded(
            f"{field}: {total} bytes in all, above the server maximum "
            f"{settings.files_max_request_bytes} (ORCHESTRATOR_FILES_MAX_REQUEST_BYTES)"
        )
    return total


def _loaded(
    item: FileContent, load: Load, settings: Settings, field: str, path: str
) -> Sequence[bytes]:
    """The chunks of a file sent beside the message, at most the per-file cap read."""
    cap = settings.files_max_file_bytes
    try:
        data = load(str(item.ref), cap, item.size)
    except NotFound as exc:
        raise NotFound(f"{field}: {path}: {exc}") from exc
    except blobs.BlobTooLarge as exc:
        raise LimitExceeded(
            f"{field}: {path} has more than {cap} bytes, above the server maximum "
            "(ORCHESTRATOR_FILES_MAX_FILE_BYTES)"
        ) from exc
    if item.size is not None and size_of(data) != item.size:
        raise InvalidRequest(
            f"{field}: {path} has {size_of(data)} bytes, its size says {item.size}"
        )
    return data


def size_of(data: bytes | Sequence[bytes]) -> int:
    """The bytes of one buffer or of its chunks."""
    return len(data) if isinstance(data, bytes) else sum(len(chunk) for chunk in data)


def check_paths(paths: object, settings: Settings, field: str = "paths") -> list[str]:
    """Paths to read, checked and normalized.

    Raises:
        InvalidRequest: not a list, or a bad path (naming its index).
        LimitExceeded: more than ``ORCHESTRATOR_FILES_MAX_COUNT`` paths.
    """
    if not isinstance(paths, list | tuple):
        raise InvalidRequest(f"{field}: expected a list of absolute paths")
    if len(paths) > settings.files_max_count:
        raise LimitExceeded(
            f"{field}: {len(paths)} paths, above the server maximum {settings.files_max_count} "
            "(ORCHESTRATOR_FILES_MAX_COUNT)"
        )
    return [archive.check_path(f"{field}[{i}]", path) for i, path in enumerate(paths)]


def check_run_request(request: ToolExecutionRequest, settings: Settings) -> None:
    """Check a tool run's ``files``, ``stdin`` and ``collect`` against the server's caps
    (files sent beside the message by the sizes they declare: they are read at the start).

    Raises:
        InvalidRequest / LimitExceeded: naming the field and the setting.
    """
    stdin_bytes = len(request.stdin.encode()) if request.stdin is not None else 0
    paths = _paths(request.files, settings, "files")
    total = _within("files", stdin_bytes, settings)
    total = _declared(request.files, paths, settings, "files", total, refs=True)
    for index, item in enumerate(request.files):
        if item.ref is None:
            total = _counted("files", index, paths[index], len(item.data()), total, settings)
    check_paths(request.collect, settings, field="collect")
