"""File bytes passed beside a task's message, through Redis (the claim-check pattern).

A 10 MB file costs a Celery message several JSON and base64 passes on each side; the client
(which talks to Redis anyway) instead stores the raw bytes under ``orch:blob:<random>`` with
a TTL and sends the key as the file's ``ref`` (and its ``size``). The worker takes them
(read and delete) on the other side. Only keys of this exact shape can be named, so a ref
can reach no other Redis key.

A blob is a Redis list of chunks of at most :data:`CHUNK_BYTES`: 1 MiB chunks move several
times faster than one string of the same size (a 10 MB ``SET`` + ``GETDEL`` costs ~50 ms
here, the same bytes in chunks ~20 ms), and a reader stops once it has read more than its
cap, whatever the list holds. :func:`put` writes one in a ``MULTI`` (whole or not at all);
:class:`Deferred` writes it chunk by chunk after the message that names it, and the reader
waits for the chunks its ``size`` says are still to come. The stream of a ``get_files``
reply is in :mod:`orchestrator.state.blob_stream`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import ResponseError

from orchestrator.errors import InvalidRequest, LimitExceeded, NotFound
from orchestrator.state import keys

__all__ = [
    "BLOB_TTL_SECONDS",
    "CHUNK_BYTES",
    "BlobTooLarge",
    "is_blob_ref",
    "blob_key",
    "put",
    "take",
    "take_chunks",
    "read_chunks",
    "Deferred",
    "discard",
    "new_ref",
    "rechunk",
    "append",
    "FOLLOW_POLL_SECONDS",
]

#: How long a blob waits to be taken (a message waiting longer in a queue fails clearly).
BLOB_TTL_SECONDS = 600
#: Largest chunk of a blob's list.
CHUNK_BYTES = 1 << 20
#: Chunks read per round trip.
_READ_CHUNKS = 4
#: How long one blocking read waits for a chunk before its caller looks around.
FOLLOW_POLL_SECONDS = 1.0
_REF = re.compile(r"^blob:[0-9a-f]{32}$")


class BlobTooLarge(LimitExceeded):
    """A blob holds more bytes than its reader allows (the caller names the setting)."""


def is_blob_ref(ref: str | None) -> bool:
    """True for a ref made by :func:`put`."""
    return ref is not None and bool(_REF.fullmatch(ref))


def blob_key(ref: str) -> str:
    """The Redis key of a blob ref.

    Raises:
        InvalidRequest: not a blob ref.
    """
    if not is_blob_ref(ref):
        raise InvalidRequest(f"ref: {ref!r} is not a file reference this system made")
    return keys.PREFIX + ref


def put(
    redis: Any, data: bytes | Iterable[bytes | memoryview], ttl_seconds: int = BLOB_TTL_SECONDS
) -> str:
    """Store ``data``, one buffer or its pieces in order (in chunks, all or nothing);
    returns its ref."""
    ref = new_ref()
    append(redis, keys.PREFIX + ref, list(_chunks(data)), ttl_seconds, transaction=True)
    return ref


def append(
    redis: Any,
    key: str,
    chunks: Sequence[bytes | memoryview],
    ttl_seconds: int,
    *,
    transaction: bool = False,
) -> None:
    """Push ``chunks`` onto blob list ``key`` and set its TTL, in one round trip (the TTL
    each time: a reader that emptied, so deleted, the key must not leave the next write a
    key without one)."""
    pipe = redis.pipeline(transaction=transaction)
    pipe.rpush(key, *chunks)
    pipe.expire(key, ttl_seconds)
    pipe.execute()


def _chunks(data: bytes | Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """``data`` in chunks (:func:`rechunk`); one empty chunk for no bytes (an empty list is
    no key)."""
    pieces = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    empty = True
    for chunk in rechunk(pieces):
        empty = False
        yield chunk
    if empty:
        yield b""


def rechunk(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """``pieces`` as chunks of :data:`CHUNK_BYTES` (the last one shorter): a large piece is
    cut in views (nothing copied), small ones (the engine streams 32 KiB at a time) are
    joined, so a list holds ten elements for 10 MiB, not three hundred."""
    pending: list[memoryview] = []
    size = 0
    for piece in pieces:
        view = memoryview(piece)
        while view:
            part = view[: CHUNK_BYTES - size]
            pending.append(part)
            size += len(part)
            view = view[len(part) :]
            if size == CHUNK_BYTES:
                yield _joined(pending)
                pending, size = [], 0
    if pending:
        yield _joined(pending)


def _joined(views: list[memoryview]) -> bytes | memoryview:
    return views[0] if len(views) == 1 else b"".join(views)


class Deferred:
    """Blobs named now and written later, once the message that names them is sent: the
    worker reads each chunk as it lands (:func:`take_chunks` with ``size``) while the rest
    is still being written."""

    def __init__(self, redis: Any, ttl_seconds: int = BLOB_TTL_SECONDS) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._pending: list[tuple[str, bytes]] = []
        self._names: list[str] = []

    def stash(self, data: bytes) -> str:
        """Remember ``data``; returns the ref it will have."""
        ref = new_ref()
        self._pending.append((ref, data))
        return ref

    def push(self) -> None:
        """Write every blob remembered, chunk by chunk (each visible as soon as written)."""
        for ref, data in self._pending:
            for chunk in _chunks(data):
                append(self._redis, keys.PREFIX + ref, [chunk], self._ttl)
        self._names = [ref for ref, _ in self._pending]
        self._pending.clear()

    def discard(self) -> None:
        """Delete the blobs written (what a reader left of them)."""
        discard(self._redis, self._names)


def _gone(ref: str, ttl_seconds: int, got: int = 0, size: int | None = None) -> NotFound:
    if got:
        return NotFound(
            f"ref: {ref}: {got} of its {size} bytes came, then none for {BLOB_WAIT_SECONDS:g} s "
            "(its writer stopped)"
        )
    return NotFound(f"ref: {ref} expired or was used already (it lives {ttl_seconds} s)")


def _over(ref: str, max_bytes: int) -> BlobTooLarge:
    return BlobTooLarge(f"ref: {ref} holds more than {max_bytes} bytes")


def take(redis: Any, ref: str, max_bytes: int | None = None) -> bytes:
    """The bytes of ``ref``, deleted as they are read (see :func:`take_chunks`)."""
    return b"".join(take_chunks(redis, ref, max_bytes))


def take_chunks(
    redis: Any, ref: str, max_bytes: int | None = None, size: int | None = None
) -> list[bytes]:
    """The chunks of ``ref`` in order, each deleted as it is read.

    Args:
        redis: the client.
        ref: a ref made by :func:`put` (or :class:`Deferred`).
        max_bytes: refuse a blob larger than this (it is deleted; at most a few chunks
            past the cap are read).
        size: the bytes the blob should hold: chunks still being written are waited for
            (:data:`BLOB_WAIT_SECONDS` at most between two), reading stops there. None:
            the blob was written whole before its ref was sent.

    Raises:
        InvalidRequest: not a blob ref.
        NotFound: taken already, expired (``BLOB_TTL_SECONDS``), or its writer stopped.
        BlobTooLarge: more than ``max_bytes``.
    """
    key = blob_key(ref)
    parts: list[bytes] = []
    total = 0
    waited_from = time.monotonic()
    while size is None or total < size:
        got = _pop(redis, key)
        if not got and size is not None:
            got = _wait_for(redis, key, waited_from + BLOB_WAIT_SECONDS)
        if not got:
            break
        waited_from = time.monotonic()
        parts.extend(got)
        total += sum(len(chunk) for chunk in got)
        if max_bytes is not None and total > max_bytes:
            redis.delete(key)
            raise _over(ref, max_bytes)
    if size is not None and (total != size or not size):
        redis.delete(key)  # what is left of a blob that is not what its sender said
    if (size is None and not parts) or total < (size or 0):
        raise _gone(ref, BLOB_TTL_SECONDS, total, size)
    return parts


#: How long a reader waits for the next chunk of a blob still being written.
BLOB_WAIT_SECONDS = 10.0


def _pop(redis: Any, key: str) -> list[bytes]:
    try:
        return list(redis.lpop(key, _READ_CHUNKS) or [])
    except ResponseError:  # not a list: a string blob of an older client, or not ours
        return _take_string(redis, key)


def _wait_for(redis: Any, key: str, until: float) -> list[bytes]:
    """The next chunk of ``key`` once one is written, or nothing past ``until``."""
    while (left := until - time.monotonic()) > 0:
        got = redis.blpop([key], timeout=min(FOLLOW_POLL_SECONDS, left))
        if got is not None:
            return [got[1]]
    return []


def _take_string(redis: Any, key: str) -> list[bytes]:
    """A blob stored as one string (the format before chunks), taken whole.

    Raises:
        ResponseError: the key is neither a list nor a string.
    """
    data = redis.getdel(key)
    return [] if data is None else [bytes(data)]


def read_chunks(
    redis: Any, ref: str, max_bytes: int | None = None, ttl_seconds: int = BLOB_TTL_SECONDS
) -> list[bytes]:
    """The chunks of ``ref`` in order, left in place (a tool run reads its files again if
    it is retried or resumed; :func:`discard` deletes them once the run is over).

    Raises:
        InvalidRequest: not a blob ref.
        NotFound: deleted already, or expired (``ttl_seconds``, only said).
        BlobTooLarge: more than ``max_bytes`` (nothing deleted).
    """
    key = blob_key(ref)
    parts: list[bytes] = []
    total = 0
    while True:
        got = redis.lrange(key, len(parts), len(parts) + _READ_CHUNKS - 1)
        parts.extend(got)
        total += sum(len(chunk) for chunk in got)
        if max_bytes is not None and total > max_bytes:
            raise _over(ref, max_bytes)
        if len(got) < _READ_CHUNKS:
            break
    if not parts:
        raise _gone(ref, ttl_seconds)
    return parts


def discard(redis: Any, refs: Iterable[str | None]) -> None:
    """Delete the blobs of ``refs`` (other refs and None are ignored)."""
    names = [keys.PREFIX + ref for ref in refs if ref is not None and is_blob_ref(ref)]
    if names:
        redis.delete(*names)


def new_ref() -> str:
    """A fresh ref, for a blob named before it is written (a stream its reader names)."""
    return f"blob:{secrets.token_hex(16)}"
