"""Capped capture of a tool's output and extraction of its JSON result. Pure, no I/O."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["CappedBuffer", "capture", "extract_result", "TRUNCATION_MARK"]

TRUNCATION_MARK = "\n[... {skipped} bytes truncated ...]\n"


class CappedBuffer:
    """Keep at most ``cap_bytes`` of a stream: its head and its tail.

    Memory stays bounded however much is written: the first half of the cap is
    kept as the head, the last half as the tail, and the bytes in between are
    only counted.
    """

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self._head_cap = cap_bytes // 2
        self._tail_cap = cap_bytes - self._head_cap
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.total_bytes = 0

    def write(self, chunk: bytes) -> None:
        """Append a chunk."""
        self.total_bytes += len(chunk)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        if len(chunk) >= self._tail_cap:
            self._tail.clear()
            self._tail.append(bytes(chunk[-self._tail_cap :]))
            self._tail_size = self._tail_cap
            return
        self._tail.append(bytes(chunk))
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= self._tail_cap:
            self._tail_size -= len(self._tail.popleft())

    @property
    def truncated(self) -> bool:
        """True when bytes were dropped between head and tail."""
        return self.total_bytes > len(self._head) + self._kept_tail_size()

    def _kept_tail_size(self) -> int:
        return min(self._tail_size, self._tail_cap)

    def with_tail_of(self, other: CappedBuffer) -> CappedBuffer:
        """This buffer's head with ``other``'s tail: for a stream whose end this buffer may
        have missed but ``other`` read (the head only this one saw)."""
        merged = CappedBuffer(self.cap_bytes)
        merged._head = bytearray(self._head)
        merged._tail = deque(other._tail)
        merged._tail_size = other._tail_size
        merged.total_bytes = max(self.total_bytes, len(self._head) + other._kept_tail_size())
        merged.total_bytes = max(merged.total_bytes, other.total_bytes)
        return merged

    def text(self) -> str:
        """The kept bytes decoded as UTF-8, with a marker where bytes were dropped."""
        tail = b"".join(self._tail)
        if len(tail) > self._tail_cap:
            tail = tail[-self._tail_cap :]
        head = bytes(self._head)
        skipped = self.total_bytes - len(head) - len(tail)
        if skipped <= 0:
            return (head + tail).decode("utf-8", errors="replace")
        return (
            head.decode("utf-8", errors="replace")
            + TRUNCATION_MARK.format(skipped=skipped)
            + tail.decode("utf-8", errors="replace")
        )


def capture(chunks: Iterable[bytes], cap_bytes: int) -> CappedBuffer:
    """Drain ``chunks`` into a new :class:`CappedBuffer`."""
    buffer = CappedBuffer(cap_bytes)
    for chunk in chunks:
        buffer.write(chunk)
    return buffer


def extract_result(stdout: str) -> Any:
    """The tool's JSON result: the last stdout line that is a JSON object,
    else the whole stdout if it parses as JSON, else None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
