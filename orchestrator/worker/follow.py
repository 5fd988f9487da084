"""A tool's output while it runs: followed from the engine, capped, published.

One follow stream (stdout and stderr, each chunk tagged with its stream) is read on a
daemon thread from the moment the container starts, so the head of a large output is
kept even after the engine's json-file log rotates. Each chunk goes into its stream's
:class:`~orchestrator.core.output.CappedBuffer` and, through a
:class:`~orchestrator.state.logs.LiveLog`, into the execution's live Redis stream.
"""

from __future__ import annotations

import logging
import threading

from orchestrator.core.output import CappedBuffer
from orchestrator.core.types import Chunk, Stream
from orchestrator.engine.base import Engine
from orchestrator.state.logs import LiveLog

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)

#: The engine's stream numbers, by name.
_STREAMS = {1: "stdout", 2: "stderr"}


class LogFollower:
    """Follow a started container's stdout and stderr on a daemon thread.

    Args:
        engine: the engine running the container.
        ref: the container's id or name.
        cap_bytes: bytes kept per stream (head and tail).
        live: where chunks are published while they arrive, if anywhere.
    """

    def __init__(
        self, engine: Engine, ref: str, cap_bytes: int, live: LiveLog | None = None
    ) -> None:
        self.engine = engine
        self.ref = ref
        self.stdout = CappedBuffer(cap_bytes)
        self.stderr = CappedBuffer(cap_bytes)
        self.live = live
        self._stream: Stream[Chunk] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="log-follower", daemon=True)

    def start(self) -> LogFollower:
        """Start following.

        Returns:
            This follower.
        """
        self._thread.start()
        return self

    def _follow(self) -> None:
        buffers = {1: self.stdout, 2: self.stderr}
        try:
            self._stream = self.engine.follow_output(self.ref)
            for number, chunk in self._stream:
                buffer = buffers.get(number)
                if buffer is None:  # stdin's number: never written to a log
                    continue
                buffer.write(chunk)
                if self.live is not None:
                    self.live.append(_STREAMS[number], chunk)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            log.debug("following the output of %s ended: %s", self.ref, exc)
            self._error = exc

    def finish(self, timeout_seconds: float = 10.0) -> bool:
        """Wait for the stream to drain after the container stopped.

        Args:
            timeout_seconds: how long to wait for the stream to end by itself.

        Returns:
            True when it ended by itself (the output is complete).
        """
        self._thread.join(timeout_seconds)
        complete = not self._thread.is_alive() and self._error is None
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001, S110 - already closed
                pass
        if self.live is not None:
            self.live.close()
        return complete
