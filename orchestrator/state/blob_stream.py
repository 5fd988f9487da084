"""Files streamed through one Redis list while they are read: the worker pushes the
large files of a ``get_files`` reply as the engine streams them, and the client reads
them as they land (the list's key is a blob ref the client chose, sent with the call).

The list holds each file's chunks followed by one empty element; one more empty element
(an empty element right after another, or first) ends the stream. Each chunk is deleted
as it is read; the key has the blob TTL, renewed with every write.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from orchestrator.state.blobs import (
    BLOB_TTL_SECONDS,
    FOLLOW_POLL_SECONDS,
    append,
    blob_key,
    rechunk,
)

__all__ = ["StreamWriter", "StreamReader", "end"]

#: Chunks a stream writer holds before it waits for Redis (bounds the worker's memory).
_STREAM_BACKLOG = 8


class StreamWriter:
    """Files pushed onto one list, chunk by chunk as they are read, while the client that
    named the list reads it (``get_files``: the engine, this worker, Redis and the client
    all move bytes at once).

    The list holds each file's chunks followed by one empty element; one more empty
    element (an empty element right after another, or first) ends the stream. A thread
    of this writer does the Redis writes, so the reading of the engine's archive goes
    on meanwhile. Use as a context manager: leaving it ends the stream, whatever happened.
    """

    def __init__(self, redis: Any, ref: str, ttl_seconds: int = BLOB_TTL_SECONDS) -> None:
        self.ref = ref
        self._key = blob_key(ref)
        self._redis = redis
        self._ttl = ttl_seconds
        self._backlog: queue.Queue[bytes | memoryview | None] = queue.Queue(_STREAM_BACKLOG)
        self._open = False  # a file has chunks and no end yet
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._push, name="blob-stream", daemon=True)
        self._thread.start()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise  # else the error that ended the files is the one to say

    def file(self, pieces: Iterable[bytes | memoryview]) -> str:
        """Push one file's bytes, then its end; returns the stream's ref."""
        for chunk in rechunk(pieces):
            self._send(chunk)
            self._open = True
        self._send(b"")
        self._open = False
        return self.ref

    def close(self) -> None:
        """End the stream (a file cut short ends first) and wait for the writes.

        Raises:
            RedisError: a write failed.
        """
        if self._thread.is_alive():  # the thread drains the backlog even after a failure
            if self._open:
                self._backlog.put(b"")
            self._backlog.put(b"")
            self._backlog.put(None)
            self._thread.join()
        if self._failed is not None:
            raise self._failed

    def _send(self, chunk: bytes | memoryview) -> None:
        if self._failed is not None:
            raise self._failed
        self._backlog.put(chunk)

    def _push(self) -> None:
        while True:
            batch = [self._backlog.get()]
            while batch[-1] is not None and not self._backlog.empty():
                batch.append(self._backlog.get_nowait())
            chunks = [chunk for chunk in batch if chunk is not None]
            if chunks and self._failed is None:
                try:
                    append(self._redis, self._key, chunks, self._ttl)
                except Exception as exc:  # noqa: BLE001 - said by close() and the next file
                    self._failed = exc
            if batch[-1] is None:
                return


def end(redis: Any, ref: str, ttl_seconds: int = BLOB_TTL_SECONDS) -> None:
    """End a stream no file was written to (the call failed first): its reader stops
    waiting at once."""
    append(redis, blob_key(ref), [b""], ttl_seconds)


class StreamReader:
    """Reads a :class:`StreamWriter`'s list as it fills (each chunk deleted as it is read)
    and gives the files it held, in order."""

    def __init__(self, redis: Any, ref: str) -> None:
        self.ref = ref
        self._key = blob_key(ref)
        self._redis = redis
        self._files: list[list[bytes]] = []
        self._current: list[bytes] = []
        self.ended = False

    def follow(self, done: Callable[[], bool], deadline: float) -> None:
        """Read until the stream ends, or until ``done()`` (asked when no chunk came for
        :data:`FOLLOW_POLL_SECONDS`) or the monotonic ``deadline``."""
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            got = self._redis.blpop([self._key], timeout=min(FOLLOW_POLL_SECONDS, left))
            if got is None:
                if done():
                    return
                continue
            self._feed([got[1]])
            self.drain()

    def drain(self) -> None:
        """Read what the list holds now."""
        while not self.ended:
            got = self._redis.lpop(self._key, _STREAM_BACKLOG)
            if not got:
                return
            self._feed(got)

    def _feed(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            if chunk:
                self._current.append(chunk)
            elif self._current:
                self._files.append(self._current)
                self._current = []
            else:
                self.ended = True
                return

    def files(self) -> Iterator[bytes]:
        """The bytes of each file read, in the order they were written."""
        for chunks in self._files:
            yield b"".join(chunks)

    def close(self) -> None:
        """Delete what is left of the stream."""
        self._redis.delete(self._key)
