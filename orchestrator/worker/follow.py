"""A tool's output while it runs: both streams followed from the engine, capped, published.

Two follow streams (stdout and stderr, kept apart) are read on daemon threads from the
moment the container starts, so the head of a large output is kept even after the
engine's json-file log rotates. Each chunk goes into a
:class:`~orchestrator.core.output.CappedBuffer` and, through a
:class:`~orchestrator.state.logs.LiveLog`, into the execution's live Redis stream.
"""

from __future__ import annotations

import logging
import threading

from orchestrator.core.output import CappedBuffer
from orchestrator.core.types import Stream
from orchestrator.engine.base import Engine
from orchestrator.state.logs import LiveLog

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)


class LogFollower:
    """Follow a started container's stdout and stderr on two daemon threads.

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
        self._streams: list[Stream[bytes]] = []
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._follow, args=("stdout", self.stdout), daemon=True),
            threading.Thread(target=self._follow, args=("stderr", self.stderr), daemon=True),
        ]

    def start(self) -> LogFollower:
        """Start both followers.

        Returns:
            This follower.
        """
        for thread in self._threads:
            thread.start()
        return self

    def _follow(self, name: str, buffer: CappedBuffer) -> None:
        try:
            stream = self.engine.container_logs(
                self.ref, stdout=name == "stdout", stderr=name == "stderr", follow=True
            )
            self._streams.append(stream)
            for chunk in stream:
                buffer.write(chunk)
                if self.live is not None:
                    self.live.append(name, chunk)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            log.debug("following the %s of %s ended: %s", name, self.ref, exc)
            self._errors.append(exc)

    def finish(self, timeout_seconds: float = 10.0) -> bool:
        """Wait for both streams to drain after the container stopped.

        Args:
            timeout_seconds: how long to wait for each stream to end by itself.

        Returns:
            True when both ended by themselves (the output is complete).
        """
        for thread in self._threads:
            thread.join(timeout_seconds)
        complete = not any(t.is_alive() for t in self._threads) and not self._errors
        for stream in self._streams:
            try:
                stream.close()
            except Exception:  # noqa: BLE001, S110 - already closed
                pass
        if self.live is not None:
            self.live.close()
        return complete
