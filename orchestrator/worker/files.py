"""Files in and out of containers: relics (``put_files`` / ``get_files``) and tool runs
(``files`` written before start, ``collect`` read back after exit).

Everything goes through the engine's archive API, which works inside the container's own
root: a symbolic link on the way is resolved there (it cannot lead to the host), a link
named as the path itself is reported and never followed, and only regular files are
returned (:mod:`orchestrator.core.archive`). Sizes are capped by
``ORCHESTRATOR_FILES_MAX_FILE_BYTES``, ``_FILES_MAX_REQUEST_BYTES`` and ``_FILES_MAX_COUNT``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestrator.core import archive
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    DockerError,
    DockerUnavailable,
    InvalidRequest,
    PathNotFound,
    WrongHost,
)
from orchestrator.models import (
    FileContent,
    FilesRead,
    FilesWritten,
    SkippedPath,
    ToolExecutionRequest,
)
from orchestrator.settings import Settings
from orchestrator.state import blob_stream, blobs, collected
from orchestrator.state import relics as relic_registry
from orchestrator.worker.file_checks import (
    Checked,
    Load,
    check_files,
    check_paths,
    check_run_request,
    size_of,
)
from orchestrator.worker.runtime import Runtime

__all__ = [
    "check_files",
    "check_paths",
    "write_files",
    "read_files",
    "put_relic_files",
    "get_relic_files",
    "collect_run_files",
    "check_run_request",
    "prepare_run",
    "run_blobs",
    "collect_run",
    "keeper",
]

log = logging.getLogger(__name__)

#: keeps one file's bytes apart from a reply, as they stream, and returns their ref
Keep = Callable[[Iterator[memoryview]], str]
#: files read above ``limit`` bytes leave the reply: ``keep`` stores them, they carry a
#: ``ref`` (collected files beside a result, large files beside a ``get_files`` reply)
Apart = archive.Apart


def _refuse_directories(engine: Engine, ref: str, paths: Sequence[str]) -> None:
    """Refuse to write a file where a directory is: the engine would replace the whole tree."""
    for path in paths:
        try:
            stream, stat = engine.get_archive(ref, path)
        except PathNotFound:
            continue
        except DockerError as exc:  # a parent is a file: the write below says so
            if isinstance(exc, DockerUnavailable):
                raise
            continue
        stream.close()  # only the stat was wanted
        if archive.is_directory(stat.mode):
            raise _directory_in_the_way(path)


def _directory_in_the_way(path: str) -> InvalidRequest:
    return InvalidRequest(
        f"files: {path} is a directory in the container; a file cannot replace it "
        "(name a path inside it)"
    )


_REPLACED_DIRECTORY = re.compile(r'cannot overwrite directory "([^"]*)"')


def write_files(engine: Engine, ref: str, files: Sequence[Checked]) -> None:
    """Write checked files into container ``ref`` (created, running or stopped).

    Missing parent directories are made (0755); an existing symbolic link named as a path
    is replaced by the file, never written through. A file never replaces a directory: the
    engine refuses it (``noOverwriteDirNonDir``), and with several files they are all
    checked first, so a refused request writes nothing.

    Raises:
        InvalidRequest: a path is a directory, or a parent of one is not a directory.
        ContainerNotFound: no such container.
    """
    if not files:
        return
    if len(files) > 1:  # one file is refused before anything is written, by the engine
        _refuse_directories(engine, ref, [path for path, _, _ in files])
    try:
        engine.put_archive(ref, "/", archive.tar_stream(files))
    except DockerError as exc:
        if isinstance(exc, DockerUnavailable):
            raise
        replaced = _REPLACED_DIRECTORY.search(str(exc))
        if replaced:
            raise _directory_in_the_way("/" + replaced.group(1).lstrip("/")) from exc
        raise InvalidRequest(f"files: the container refused them: {exc}") from exc


def read_files(
    engine: Engine, ref: str, paths: Sequence[str], settings: Settings, apart: Apart | None = None
) -> FilesRead:
    """Read checked paths from container ``ref``: a directory gives its files; with
    ``apart``, large ones are stored apart (never base64-encoded on the way).

    Raises:
        ContainerNotFound: no such container.
    """
    budget = archive.Budget.for_request(
        settings.files_max_file_bytes, settings.files_max_request_bytes, settings.files_max_count
    )
    result = FilesRead()
    for path in paths:
        try:
            stream, stat = engine.get_archive(ref, path)
        except PathNotFound:
            result.missing.append(path)
            continue
        except DockerError as exc:  # e.g. a parent that is a file
            if isinstance(exc, DockerUnavailable):
                raise
            result.skipped.append(SkippedPath(path=path, reason=str(exc)))
            continue
        try:
            _read_one(stream, stat, path, budget, result, apart)
        finally:
            stream.close()
    return result


def _read_one(
    stream: object,
    stat: object,
    path: str,
    budget: archive.Budget,
    result: FilesRead,
    apart: Apart | None,
) -> None:
    mode = getattr(stat, "mode", 0)
    if archive.is_symlink(mode):
        target = getattr(stat, "link_target", "")
        result.skipped.append(
            SkippedPath(path=path, reason=f"symbolic link to {target!r}, not followed")
        )
        return
    try:
        found = archive.read_archive(
            stream,  # type: ignore[arg-type]
            path,
            budget,
            single=not archive.is_directory(mode),
            apart=apart,
        )
    except archive.ArchiveTooLarge as exc:
        result.skipped.append(SkippedPath(path=path, reason=str(exc)))
        return
    for item in found.files:
        fields = {"size": item.size, "truncated": item.truncated}
        if item.ref is not None:
            result.files.append(FileContent(path=item.path, mode=item.mode, ref=item.ref, **fields))
        else:
            result.files.append(FileContent.of(item.path, item.data, item.mode, **fields))
    result.skipped.extend(SkippedPath(path=s.path, reason=s.reason) for s in found.skipped)
    if found.unlisted:
        result.skipped.append(
            SkippedPath(path=path, reason=f"and {found.unlisted} more entries skipped, not listed")
        )


# -- relics -------------------------------------------------------------------------------


def _relic_container(rt: Runtime, relic_id: str) -> str:
    """The container of a relic on this host.

    Raises:
        RelicNotFound / WrongHost / HostUnavailable.
    """
    entry = relic_registry.lookup(rt.redis, relic_id)
    rt.require_local(entry.host, f"relic {relic_id}")
    return entry.container_name


def put_relic_files(rt: Runtime, relic_id: str, files: Sequence[FileContent]) -> FilesWritten:
    """Write files into a relic's container (``orchestrator.relics.put_files``); a file may
    come beside the message (``ref`` from :mod:`orchestrator.state.blobs`, taken: read and
    deleted). A refused call deletes every blob it names."""
    container = _relic_container(rt, relic_id)
    try:
        checked = check_files(
            files, rt.settings, load=functools.partial(blobs.take_chunks, rt.redis)
        )
    except Exception:
        blobs.discard(rt.redis, [item.ref for item in files])
        raise
    write_files(rt.engine, container, checked)
    return FilesWritten(
        relic_id=relic_id,
        written=[path for path, _, _ in checked],
        bytes=sum(size_of(data) for _, data, _ in checked),
    )


def get_relic_files(
    rt: Runtime,
    relic_id: str,
    paths: object,
    inline_max_bytes: int | None = None,
    stream: str | None = None,
) -> FilesRead:
    """Read files from a relic's container (``orchestrator.relics.get_files``).

    Args:
        rt: the worker's runtime.
        relic_id: the relic.
        paths: absolute paths of files or directories.
        inline_max_bytes: files larger than this go beside the reply (a ``ref`` to take
            with :func:`orchestrator.state.blobs.take`); None: every file in the reply.
        stream: a blob ref the client reads as it fills: the files beside the reply go
            there, in order, as they are read (:class:`~orchestrator.state.blob_stream.
            StreamWriter`), and each carries this ref.
    """
    try:
        checked = check_paths(paths, rt.settings)
        container = _relic_container(rt, relic_id)
    except WrongHost:
        raise  # the relic's host reads them, into the same stream
    except Exception:
        if stream is not None:
            blob_stream.end(rt.redis, stream)  # the client stops waiting for files
        raise
    if stream is not None:
        with blob_stream.StreamWriter(rt.redis, stream) as writer:
            apart = Apart(inline_max_bytes or 0, writer.file)
            result = read_files(rt.engine, container, checked, rt.settings, apart)
    else:
        apart = None
        if inline_max_bytes is not None:
            apart = Apart(inline_max_bytes, lambda pieces: blobs.put(rt.redis, pieces))
        result = read_files(rt.engine, container, checked, rt.settings, apart)
    result.relic_id = relic_id
    return result


# -- tool runs ------------------------------------------------------------------------------


def keeper(rt: Runtime, execution_id: str) -> Keep:
    """Where a run's large collected files go: beside its result, with the result's TTL."""
    numbers = itertools.count()

    def keep(pieces: Iterator[memoryview]) -> str:
        ttl = rt.settings.result_ttl_seconds
        return collected.store(rt.redis, execution_id, next(numbers), b"".join(pieces), ttl)

    return keep


def prepare_run(
    engine: Engine, ref: str, request: ToolExecutionRequest, settings: Settings, redis: Any
) -> None:
    """Before a tool's container starts: write its ``files``, attach its ``stdin``."""
    write_run_files(engine, ref, request, settings, redis)
    if request.stdin is not None:
        engine.attach_stdin(ref, request.stdin.encode())


def write_run_files(
    engine: Engine, ref: str, request: ToolExecutionRequest, settings: Settings, redis: Any
) -> None:
    """Write a run's ``files`` into its container (created, or a running pool container
    before its agent gets the tool); those sent beside the message are read from Redis and
    left there (see :func:`run_blobs`)."""
    if not request.files:
        return
    ttl = settings.result_ttl_seconds
    load: Load = lambda blob, cap, _size: blobs.read_chunks(redis, blob, cap, ttl)  # noqa: E731
    write_files(engine, ref, check_files(request.files, settings, load=load))


@contextmanager
def run_blobs(
    rt: Runtime, request: ToolExecutionRequest, keep_for: tuple[type[BaseException], ...]
) -> Iterator[None]:
    """The blobs of a run's ``files`` are deleted once the run is over: when it returns,
    or fails with an error other than ``keep_for`` (an engine that will be retried, a
    delivery that another worker runs). A retried or resumed run reads them again; a worker
    that dies leaves them to their TTL (the result's)."""
    refs = [item.ref for item in request.files]
    try:
        yield
    except keep_for:
        raise
    except Exception:
        blobs.discard(rt.redis, refs)
        raise
    blobs.discard(rt.redis, refs)


def collect_run(
    rt: Runtime, ref: str, request: ToolExecutionRequest, execution_id: str
) -> FilesRead:
    """After a tool exited, before its container goes: read its ``collect`` paths."""
    if not request.collect:
        return FilesRead()
    paths = check_paths(request.collect, rt.settings, field="collect")
    return collect_run_files(rt.engine, ref, paths, rt.settings, keeper(rt, execution_id))


def collect_run_files(
    engine: Engine, ref: str, paths: Sequence[str], settings: Settings, keep: Keep
) -> FilesRead:
    """Read a finished run's ``collect`` paths; files above
    ``ORCHESTRATOR_COLLECT_INLINE_MAX_BYTES`` are kept apart and carry a ``ref``."""
    return read_files(engine, ref, paths, settings, Apart(settings.collect_inline_max_bytes, keep))
