"""Workarounds for defects in the libraries the worker runs on.

Each workaround is a small, idempotent patch applied once when the worker module loads,
documented with the failure it prevents and the test that reproduces that failure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["finish_redis_channel_close"]

_PATCHED = "_orchestrator_finishes_close"


def finish_redis_channel_close() -> None:
    """Let kombu's Redis channel finish closing when its connection is already dead.

    When the broker connection breaks while a channel waits on a ``BRPOP``,
    ``Channel.close`` first reads that pending reply, gets the connection error, and stops
    before the channel is marked closed. The transport's own pass over its channels, which
    would retry, ends at the first channel that raises, so a worker's consuming channel can
    stay open. Celery (5.7) then closes the connection once more after detaching the
    transport, and that close needs the transport to re-queue the channel's unacknowledged
    messages: ``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery takes
    it for an unrecoverable error and the worker stops consuming instead of reconnecting
    (seen in about one Redis restart in six with runs in flight;
    ``tests/integration/test_resilience.py`` reproduces it deterministically).

    The patch completes the interrupted close at once: the pending read has been given up
    (kombu clears its poll flag in a ``finally``), so the second attempt closes the channel
    while the transport is still attached, as when nothing interrupts it. Errors from that
    attempt propagate as before.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel.close
    if getattr(original, _PATCHED, False):
        return

    def close(self: Any) -> None:
        try:
            original(self)
        except self.connection_errors:
            if self.closed:
                raise
            original(self)

    setattr(close, _PATCHED, True)
    close.__doc__ = original.__doc__
    kombu_redis.Channel.close = close  # type: ignore[method-assign]
