"""Resource usage of a tool while it runs, sampled from the engine's stats stream.

A container's cgroup disappears when it exits, so usage is sampled while it
runs: one streaming stats request per run, read on a background thread, keeping
the peak memory and the latest counters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from orchestrator.core import stats
from orchestrator.core.types import Stream
from orchestrator.engine.base import Engine
from orchestrator.models import ToolRunStats

__all__ = ["UsageSampler"]

log = logging.getLogger(__name__)
MB = 1024 * 1024


class UsageSampler:
    """Follow a container's stats stream on a daemon thread until it ends.

    Args:
        engine: the engine running the container.
        ref: the container's id or name.
        delay_seconds: how long to wait before following (nothing is sampled from a
            container that ended sooner).
    """

    def __init__(self, engine: Engine, ref: str, delay_seconds: float = 0.0) -> None:
        self.engine = engine
        self.ref = ref
        self.delay_seconds = delay_seconds
        self._peak_memory = 0
        self._last: Mapping[str, Any] | None = None
        self._samples = 0
        self._stream: Stream[dict[str, Any]] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)

    def start(self) -> UsageSampler:
        """Start sampling.

        Returns:
            This sampler.
        """
        self._thread.start()
        return self

    def _run(self) -> None:
        if self.delay_seconds > 0 and self._stopped.wait(self.delay_seconds):
            return
        try:
            stream = self.engine.stream_stats(self.ref)
        except Exception as exc:  # noqa: BLE001 - sampling is best effort, never fatal
            log.debug("no stats stream of %s: %s", self.ref, exc)
            return
        self._stream = stream
        try:
            for raw in stream:
                # The stream does not end with the container: it then sends empty samples.
                if self._stopped.is_set() or str(raw.get("read", "")).startswith("0001-"):
                    break
                self.add(raw)
        except Exception as exc:  # noqa: BLE001 - sampling is best effort, never fatal
            log.debug("stats stream of %s ended: %s", self.ref, exc)
        finally:
            _close(stream)

    def add(self, raw: Mapping[str, Any]) -> None:
        """Fold one stats payload into the running figures."""
        if not raw.get("memory_stats"):
            return
        peak = stats.peak_memory_bytes(raw) or 0
        self._peak_memory = max(self._peak_memory, peak, stats.memory_used_bytes(raw))
        self._last = raw
        self._samples += 1

    def stop(self, join_seconds: float = 0.0) -> ToolRunStats:
        """Stop following (the container has exited) and return what was seen.

        The reader thread is not waited for by default: it ends by itself on the
        engine's next (empty) sample, and everything it saw before is already folded in.

        Args:
            join_seconds: how long to wait for the reader thread to end.

        Returns:
            The figures seen so far.
        """
        self._stopped.set()  # a reader still opening its stream closes it at once
        stream = self._stream
        if stream is not None:
            _close(stream)
        self._thread.join(join_seconds)
        return self.summary()

    def summary(self) -> ToolRunStats:
        """The figures so far as ToolRunStats (None where nothing was sampled)."""
        raw = self._last
        if raw is None:
            return ToolRunStats()
        rx, tx = stats.network_bytes(raw)
        read, write = stats.block_io_bytes(raw)
        return ToolRunStats(
            peak_memory_mb=round(self._peak_memory / MB, 3),
            cpu_seconds=round(stats.cpu_total_seconds(raw), 3),
            network_rx_mb=round(rx / MB, 3),
            network_tx_mb=round(tx / MB, 3),
            disk_read_mb=round(read / MB, 3),
            disk_write_mb=round(write / MB, 3),
            samples=self._samples,
        )


def _close(stream: Stream[Any]) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001, S110 - closing a finished stream may fail
        pass
