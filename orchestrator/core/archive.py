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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from orchestrator.errors import InvalidRequest, LimitExceeded

__all__ = [
    "GO_DIR",
    "GO_SYMLINK",
    "check_path",
    "Piece",
    "TarStream",
    "tar_stream",
    "build_archive",
    "Apart",
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


#: Bytes as they travel: one buffer, or pieces of one (never joined on the way).
Piece = bytes | memoryview


class TarStream:
    """A tar archive to extract at ``/`` as the pieces it is made of: headers, each file's
    bytes as given (not copied), padding. ``len()`` is its size in bytes; iterating gives
    the pieces in order (an HTTP body of known length).
    """

    def __init__(self, pieces: Iterable[Piece]) -> None:
        self.pieces: tuple[Piece, ...] = tuple(pieces)
        self.size = sum(len(piece) for piece in self.pieces)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Piece]:
        return iter(self.pieces)

    def getvalue(self) -> bytes:
        """The archive as one buffer."""
        return b"".join(self.pieces)


def tar_stream(
    files: Iterable[tuple[str, bytes | Sequence[Piece], int]], mtime: float | None = None
) -> TarStream:
    """A tar archive to extract at ``/``: one regular file per ``(path, data, mode)``,
    ``data`` one buffer or its pieces in order.

    No directory members: missing parents are made by the engine (mode 0755), existing
    ones keep their own mode and owner.
    """
    stamp = int(time.time() if mtime is None else mtime)
    pieces: list[Piece] = []
    for path, data, mode in files:
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        info = tarfile.TarInfo(check_path("path", path).lstrip("/"))
        info.size, info.mode, info.mtime = sum(len(p) for p in parts), mode & 0o7777, stamp
        pieces.append(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        pieces.extend(part for part in parts if len(part))
        pieces.append(_NUL * (-info.size % tarfile.BLOCKSIZE))
    pieces.append(_NUL * (2 * tarfile.BLOCKSIZE))  # the end of the archive
    return TarStream(pieces)


_NUL = b"\0"


def build_archive(files: Iterable[tuple[str, bytes, int]], mtime: float | None = None) -> bytes:
    """:func:`tar_stream` as one buffer."""
    return tar_stream(files, mtime).getvalue()


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
    """A regular file read from an archive (``data`` capped: see ``truncated``); a file
    kept apart has no ``data`` here but the ``ref`` its keeper gave."""

    path: str
    data: bytes
    mode: int
    size: int
    truncated: bool
    ref: str | None = None


@dataclass(frozen=True)
class Apart:
    """Files of more than ``limit`` bytes (as read, within the caps) are not gathered into
    one buffer: ``keep`` gets their pieces as they stream, stores them, returns a ref."""

    limit: int
    keep: Callable[[Iterator[memoryview]], str]


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


_TOO_LARGE = "archive larger than ORCHESTRATOR_FILES_MAX_REQUEST_BYTES allows"


class _Forward(io.RawIOBase):
    """A forward-only file over an iterator of chunks, stopping past ``budget.stream_bytes``.

    tarfile reads it as a plain archive (mode ``r:``, seeking forward only): headers come
    straight from it, and a member's bytes are read from it once, copied once (the stream
    mode, ``r|``, buffers them and copies each byte four to five times).
    """

    def __init__(self, chunks: Iterable[bytes], budget: Budget) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")  # a view: taking from it copies nothing
        self._position = 0
        self._budget = budget

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("an archive from the engine is read forward only")
        if offset < self._position:
            raise io.UnsupportedOperation("an archive from the engine is read forward only")
        for _ in self.pieces(offset - self._position):
            pass
        return self._position

    def pieces(self, size: int) -> Iterator[memoryview]:
        """The next ``size`` bytes (fewer at the end) as views of the engine's chunks."""
        while size > 0:
            while not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                self._pending = memoryview(chunk)
            piece = self._pending[:size]
            if len(piece) > self._budget.stream_bytes:
                raise ArchiveTooLarge(_TOO_LARGE)
            self._budget.stream_bytes -= len(piece)
            self._pending = self._pending[len(piece) :]
            self._position += len(piece)
            size -= len(piece)
            yield piece

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise io.UnsupportedOperation("read a given size")
        return b"".join(self.pieces(size))

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        done = 0
        for piece in self.pieces(len(buffer)):
            buffer[done : done + len(piece)] = piece
            done += len(piece)
        return done


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
    chunks: Iterable[bytes],
    requested: str,
    budget: Budget,
    *,
    single: bool = False,
    apart: Apart | None = None,
) -> ArchiveContents:
    """The regular files of an archive the engine made of ``requested``.

    Members are named from the parent of ``requested`` (``b``, ``b/x`` for ``/a/b``).

    Args:
        chunks: the archive's bytes as they stream.
        requested: the (checked) path that was archived.
        budget: the request's remaining budget, spent here.
        single: the path is one file: stop after its member (skip draining the stream).
        apart: where large files go as they stream (None: every file in ``data``).

    Raises:
        ArchiveTooLarge: the archive streamed past ``budget.stream_bytes``.
    """
    found = ArchiveContents()
    parent = posixpath.dirname(requested)
    reader = _Forward(chunks, budget)
    try:
        with tarfile.open(fileobj=reader, mode="r:") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # type: ignore[attr-defined]  # kept, never used
                _take(archive, reader, member, parent, requested, budget, found, apart)
                if single:
                    break
    except tarfile.ReadError as exc:
        if not found.files and not found.skipped and "empty file" in str(exc):
            return found
        raise
    return found


def _take(
    archive: tarfile.TarFile,
    reader: _Forward,
    member: tarfile.TarInfo,
    parent: str,
    requested: str,
    budget: Budget,
    found: ArchiveContents,
    apart: Apart | None,
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
    budget.content_bytes -= wanted
    mode, truncated = member.mode & 0o7777, wanted < member.size
    if member.sparse is not None:  # a GNU sparse file (the engine makes none): tarfile maps it
        handle = archive.extractfile(member)
        data = handle.read(wanted) if handle is not None and wanted > 0 else b""
    elif apart is not None and wanted > apart.limit:
        reader.seek(member.offset_data)  # the bytes follow the header, as they are
        if wanted > budget.stream_bytes:  # refused before ``keep`` stores any of it
            raise ArchiveTooLarge(_TOO_LARGE)
        ref = apart.keep(_exactly(reader.pieces(wanted), wanted))
        found.files.append(ReadFile(path, b"", mode, member.size, truncated, ref))
        return
    else:
        reader.seek(member.offset_data)
        data = reader.read(wanted)
    if len(data) < wanted:
        raise tarfile.ReadError("unexpected end of data")
    found.files.append(ReadFile(path, data, mode, member.size, truncated))


def _exactly(pieces: Iterator[memoryview], size: int) -> Iterator[memoryview]:
    """``pieces``, or an error once they end before ``size`` bytes (a cut stream)."""
    for piece in pieces:
        size -= len(piece)
        yield piece
    if size > 0:
        raise tarfile.ReadError("unexpected end of data")
