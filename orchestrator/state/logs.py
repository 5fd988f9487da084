"""A tool's output while it runs, published live in Redis and read back by clients.

Workers append each chunk of a tool's output (read from the engine by
:class:`~orchestrator.worker.follow.LogFollower`, or from an exec) through
:class:`LiveLog`, up to a byte budget, into a capped Redis stream per execution that
clients tail (``orchestrator tool logs --follow``) with :func:`follow_live`.
"""

from __future__ import annotations

import codecs
import logging
import threading
from collections.abc import Iterator
from typing import Any

from orchestrator.core import redaction
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["LiveLog", "LiveReader", "join_live", "read_live", "follow_live", "EOF_FIELD"]

log = logging.getLogger(__name__)
CHUNK_BYTES = 8192
EOF_FIELD = "eof"


class LiveLog:
    """Appends output chunks of one execution to its Redis stream, within a budget.

    Args:
        redis: a redis-py client.
        execution_id: whose output this is.
        budget_bytes: bytes published per stream name; past it a marker is sent once.
        ttl_seconds: lifetime of the stream key.
        secrets: plain secret values, masked in every form
            :func:`~orchestrator.core.redaction.secret_forms` lists before publishing.
    """

    def __init__(
        self,
        redis: Any,
        execution_id: str,
        budget_bytes: int,
        ttl_seconds: int,
        secrets: list[str] | None = None,
    ) -> None:
        self.redis = redis
        # Every form the result masks (base64, hex, JSON-escaped...), not just the raw value.
        self.forms = redaction.secret_forms(secrets or [])
        self.key = keys.logs(execution_id)
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self._sent: dict[str, int] = {}
        self._expiring = False
        self._carry: dict[str, bytes] = {}
        self._hold = max((len(f.encode()) for f in self.forms), default=1) - 1
        self._lock = threading.Lock()

    def append(self, stream: str, chunk: bytes) -> None:
        """Publish a chunk of ``stream`` (``stdout`` or ``stderr``) if the budget allows.

        The last few bytes (the longest secret form, less one) are held back until the next
        chunk (or :meth:`close`), so a secret split across two chunks is still recognised
        and redacted.
        """
        with self._lock:
            data = redaction.redact_bytes(self._carry.pop(stream, b"") + chunk, self.forms)
            if self._hold:
                data, self._carry[stream] = data[: -self._hold], data[-self._hold :]
            pieces, truncated = self._take(stream, data)
        self._publish(stream, pieces, truncated)

    def _take(self, stream: str, data: bytes) -> tuple[list[bytes], bool]:
        """Cut ``data`` to the stream's remaining budget, in stream-sized pieces."""
        sent = self._sent.get(stream, 0)
        if sent >= self.budget_bytes or not data:
            return [], False
        kept = data[: self.budget_bytes - sent]
        self._sent[stream] = sent + len(kept)
        pieces = [kept[i : i + CHUNK_BYTES] for i in range(0, len(kept), CHUNK_BYTES)]
        return pieces, len(kept) < len(data)

    def _publish(self, stream: str, pieces: list[bytes], truncated: bool) -> None:
        if not pieces and not truncated:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)  # one round trip per chunk
            for piece in pieces:
                pipe.xadd(self.key, {"stream": stream, "data": piece}, maxlen=4096)
            if truncated:
                pipe.xadd(self.key, {"stream": stream, "data": b"", "truncated": b"1"})
            if pieces and not self._expiring:
                # From the first write, not only at close: a worker that dies mid-run leaves a
                # stream that still expires (Redis keeps no key forever under noeviction).
                pipe.expire(self.key, self.ttl_seconds)
            pipe.execute()
            self._expiring = self._expiring or bool(pieces)
        except Exception:  # noqa: BLE001 - live logs are best effort; the result has the output
            log.debug("could not publish live output of %s", self.key, exc_info=True)

    def close(self) -> None:
        """Publish what was held back, mark the end of the output, let the stream expire."""
        with self._lock:
            held = [(name, self._take(name, data)) for name, data in self._carry.items()]
            self._carry.clear()
        for name, (pieces, truncated) in held:
            self._publish(name, pieces, truncated)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(self.key, {"stream": "", "data": b"", EOF_FIELD: b"1"}, maxlen=4096)
            pipe.expire(self.key, self.ttl_seconds)
            pipe.execute()
        except Exception:  # noqa: BLE001 - see append
            log.debug("could not close live output of %s", self.key, exc_info=True)


def _decode(entry: dict[Any, Any]) -> dict[str, Any]:
    return {text(k) or "": v for k, v in entry.items()}


def join_live(entries: Any) -> dict[str, str]:
    """``{"stdout", "stderr"}`` of a stream's entries (an ``XRANGE`` reply)."""
    parts: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    for _, entry in entries:
        fields = _decode(entry)
        stream = fields.get("stream", b"")
        name = text(stream) or ""
        if name in parts:
            parts[name].append(fields.get("data", b""))
    return {
        name: b"".join(chunks).decode("utf-8", errors="replace") for name, chunks in parts.items()
    }


def read_live(redis: Any, execution_id: str) -> dict[str, str]:
    """Everything published so far: ``{"stdout", "stderr"}``."""
    return join_live(redis.xrange(keys.logs(execution_id)))


class LiveReader:
    """Where a follower is in an execution's stream, and the chunks of what it reads next.

    No I/O: the caller reads with ``XREAD {key: last}`` (blocking or asyncio) and feeds the
    reply to :meth:`feed` until :attr:`ended`.
    """

    def __init__(self, execution_id: str) -> None:
        self.key = keys.logs(execution_id)
        self.last: Any = "0-0"
        self.ended = False
        self._decoders: dict[str, Any] = {}

    def feed(self, reply: Any) -> list[tuple[str, str]]:
        """The ``(stream, text)`` chunks of one ``XREAD`` reply, up to the end marker."""
        chunks: list[tuple[str, str]] = []
        for entry_id, entry in reply[0][1] if reply else []:
            self.last = entry_id
            fields = _decode(entry)
            if fields.get(EOF_FIELD):
                self.ended = True
                break
            chunk = self._chunk(fields)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _chunk(self, fields: dict[str, Any]) -> tuple[str, str] | None:
        name = text(fields.get("stream", b"")) or ""
        if fields.get("truncated"):
            return name, "\n[... live output truncated; the result keeps head and tail ...]\n"
        data = fields.get("data", b"")
        if not isinstance(data, bytes):
            return name, str(data)
        decoder = self._decoders.setdefault(name, codecs.getincrementaldecoder("utf-8")("replace"))
        decoded = decoder.decode(data)  # a character split between entries stays whole
        return (name, decoded) if decoded else None


def follow_live(
    redis: Any, execution_id: str, block_ms: int = 1000, idle_rounds: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(stream, text)`` chunks as they are published, until the end marker.

    Args:
        redis: a redis-py client.
        execution_id: whose output to follow.
        block_ms: how long one read blocks.
        idle_rounds: stop after this many empty reads (None: wait for the end marker).
    """
    reader = LiveReader(execution_id)
    idle = 0
    while not reader.ended:
        reply = redis.xread({reader.key: reader.last}, block=block_ms, count=512)
        if reply:
            idle = 0
            yield from reader.feed(reply)
            continue
        idle += 1
        if idle_rounds is not None and idle >= idle_rounds:
            return
