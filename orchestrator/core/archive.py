"""Tar archives of files going into and out of containers (pure: no engine, no I/O).

Files reach a container through the engine's archive API only (``put_archive`` /
``get_archive``): no bind mount, no shell. This module checks the paths, builds the
archive written at ``/`` and reads back the archive the engine streams, within the
server's caps:

- a path is absolute, has no ``..`` component and no NUL, and is not ``/`` itself;
- only regular files come back: symbolic links, hard links, devices, pipes and sockets
  in an archive are skipped with the reason, and never followed;
- a member that would land outside the path asked for is skipped;
- each file's bytes are capped (``truncated`` past the cap, its real ``size`` kept), all
  files of a request share one budget, and the bytes read from the engine are bounded so
  that a huge tree cannot keep a worker reading.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from orchestrator.errors import InvalidRequest, LimitExceeded

__all__ = [
    "GO_DIR",
    "GO_SYMLINK",
    "check_path",
    "build_archive",
    "Budget",
    "ReadFile",
    "Skipped",
    "ArchiveTooLarge",
    "read_archive",
    "is_directory",
    "is_symlink",
]

#: The Go ``os.FileMode`` bits the engine reports in an :class:`ArchiveStat`.
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
MAX_PATH_LENGTH = 4096


def check_path(field_name: str, path: object) -> str:
    """A container path, normalized (``//`` and ``.`` folded, no trailing ``/``).

    Raises:
        InvalidRequest: naming ``field_name``: not a string, not absolute, ``/`` itself,
            a ``..`` component, NUL or a newline, or longer than 4096 characters.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidRequest(f"{field_name}: {path!r} must be an absolute path in the container")
    if any(c in path for c in "\x00\n\r"):
        raise InvalidRequest(f"{field_name}: {path!r} must not contain NUL or newlines")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidRequest(f"{field_name}: longer than {MAX_PATH_LENGTH} characters")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest(f"{field_name}: {path!r} must not contain a '..' component")
    if not parts:
        raise InvalidRequest(f"{field_name}: {path!r} names the root; name a file or directory")
    return "/" + "/".join(parts)


def build_archive(files: Iterable[tuple[str, bytes, int]], mtime: float | None = None) -> bytes:
    """A tar archive to extract at ``/``: one regular file per ``(path, data, mode)``.

    No directory members: missing parents are made by the engine (mode 0755), existing
    ones keep their own mode and owner.
    """
    stamp = int(time.time() if mtime is None else mtime)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, data, mode in files:
            info = tarfile.TarInfo(check_path("path", path).lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode & 0o7777, stamp
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def is_directory(go_mode: int) -> bool:
    """True when an :class:`ArchiveStat` mode says directory."""
    return bool(go_mode & GO_DIR)


def is_symlink(go_mode: int) -> bool:
    """True when an :class:`ArchiveStat` mode says symbolic link."""
    return bool(go_mode & GO_SYMLINK)


@dataclass
class Budget:
    """What one request may still read: bytes of content, files, bytes from the engine."""

    max_file_bytes: int
    content_bytes: int
    files: int
    #: bytes of archive read from the engine (headers and skipped data included)
    stream_bytes: int

    @classmethod
    def for_request(cls, max_file_bytes: int, max_request_bytes: int, max_count: int) -> Budget:
        """The budget of one request: twice the content cap may be streamed past."""
        return cls(max_file_bytes, max_request_bytes, max_count, 2 * max_request_bytes + 2**20)


@dataclass(frozen=True)
class ReadFile:
    """A regular file read from an archive (``data`` capped: see ``truncated``)."""

    path: str
    data: bytes
    mode: int
    size: int
    truncated: bool


@dataclass(frozen=True)
class Skipped:
    """A member not returned, and why."""

    path: str
    reason: str


#: Skipped members listed per archive; past them only their number is said (a tree of a
#: million links must not make a reply of a million lines).
MAX_SKIPPED_LISTED = 100


@dataclass
class ArchiveContents:
    """What :func:`read_archive` found."""

    files: list[ReadFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: skipped members past :data:`MAX_SKIPPED_LISTED`, counted only
    unlisted: int = 0

    def skip(self, path: str, reason: str) -> None:
        """Note a member not returned (or only count it, past the listed maximum)."""
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(Skipped(path, reason))
        else:
            self.unlisted += 1


class ArchiveTooLarge(LimitExceeded):
    """Raised when an archive streams more bytes than a request's budget allows."""


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of chunks, stopping past ``budget.stream_bytes``."""

    def __init__(self, chunks: Iterable[bytes], budget: Budget) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")  # a view: taking from it copies nothing
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        if size > self._budget.stream_bytes:
            raise ArchiveTooLarge("archive larger than ORCHESTRATOR_FILES_MAX_REQUEST_BYTES allows")
        self._budget.stream_bytes -= size
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _kind(member: tarfile.TarInfo) -> str | None:
    """Why a member is not returned (None: a regular file or a directory)."""
    if member.isreg() or member.isdir():
        return None
    if member.issym():
        return f"symbolic link to {member.linkname!r}, not followed"
    if member.islnk():
        return "hard link, not followed"
    if member.ischr() or member.isblk():
        return "device file, not read"
    if member.isfifo():
        return "named pipe, not read"
    return "not a regular file"


def _member_path(member: tarfile.TarInfo, parent: str, requested: str) -> str | None:
    """The container path of a member, or None when it would fall outside ``requested``."""
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    full = posixpath.join(parent, *parts)
    if full != requested and not full.startswith(requested + "/"):
        return None
    return full


def read_archive(
    chunks: Iterable[bytes], requested: str, budget: Budget, *, single: bool = False
) -> ArchiveContents:
    """The regular files of an archive the engine made of ``requested``.

    Members are named from the parent of ``requested`` (``b``, ``b/x`` for ``/a/b``).

    Args:
        chunks: the archive's bytes as they stream.
        requested: the (checked) path that was archived.
        budget: the request's remaining budget, spent here.
        single: the path is one file: stop after its member (skip draining the stream).

    Raises:
        ArchiveTooLarge: the archive streamed past ``budget.stream_bytes``.
    """
    found = ArchiveContents()
    parent = posixpath.dirname(requested)
    try:
        with tarfile.open(
            fileobj=_ChunkReader(chunks, budget), mode="r|", bufsize=1 << 20
        ) as archive:
            for member in archive:
                _take(archive, member, parent, requested, budget, found)
                if single:
                    break
    except tarfile.ReadError as exc:
        if not found.files and not found.skipped and "empty file" in str(exc):
            return found
        raise
    return found


def _take(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    parent: str,
    requested: str,
    budget: Budget,
    found: ArchiveContents,
) -> None:
    path = _member_path(member, parent, requested)
    if path is None:
        found.skip(member.name, "outside the requested path")
        return
    reason = _kind(member)
    if reason is not None:
        found.skip(path, reason)
        return
    if member.isdir():
        return
    if budget.files <= 0:
        found.skip(path, "over ORCHESTRATOR_FILES_MAX_COUNT files")
        return
    budget.files -= 1
    wanted = min(member.size, budget.max_file_bytes, budget.content_bytes)
    handle = archive.extractfile(member)
    data = handle.read(wanted) if handle is not None and wanted > 0 else b""
    budget.content_bytes -= len(data)
    found.files.append(
        ReadFile(path, data, member.mode & 0o7777, member.size, len(data) < member.size)
    )
