"""Workarounds for defects in the libraries the worker runs on.

Each workaround is a small, idempotent patch applied once when the worker module loads,
documented with the failure it prevents and the test that reproduces that failure.

They patch private kombu methods and rely on how Celery drives them, as
:mod:`orchestrator.state.redis_broker` relies on kombu's Redis key layout: each was written
for, and tested with, the celery and kombu releases in :data:`WRITTEN_FOR`. pyproject.toml
keeps both below their next minor release and the lock files pin them; with any other
release, :func:`check_versions` logs a warning naming both versions.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "WRITTEN_FOR",
    "apply_all",
    "check_versions",
    "finish_redis_channel_close",
    "keep_messages_taken_before_a_broker_loss",
]

#: The ``major.minor`` release of each library these workarounds were written for.
WRITTEN_FOR: Mapping[str, str] = {"celery": "5.7", "kombu": "5.7"}
#: What depends on each library's internals.
_DEPENDENTS = {
    "celery": f"the workarounds in {__name__}",
    "kombu": f"the workarounds in {__name__} and the Redis key layout that "
    "orchestrator.state.redis_broker reads",
}

_PATCHED = "_orchestrator_patched"

log = logging.getLogger(__name__)


def apply_all() -> None:
    """Apply every workaround below (the worker calls this once, at import)."""
    check_versions()
    finish_redis_channel_close()
    keep_messages_taken_before_a_broker_loss()


def _minor(version: str) -> str:
    """``major.minor`` of a version string: ``5.7`` for ``5.7.0`` or ``5.7.0rc1``."""
    return ".".join(version.split(".")[:2])


def check_versions(installed: Mapping[str, str] | None = None) -> list[str]:
    """Warn about each library whose release is not the one the workarounds were written for.

    Args:
        installed: library name to version; the imported libraries' ``__version__`` when
            omitted.

    Returns:
        The warnings logged, one per library that differs (none when all match).
    """
    warnings = []
    for name, written_for in WRITTEN_FOR.items():
        version = (
            installed[name] if installed is not None else importlib.import_module(name).__version__
        )
        if _minor(version) == written_for:
            continue
        message = (
            f"{name} {version} is installed, but {_DEPENDENTS[name]} were written for "
            f"{name} {written_for}: check that each still applies and is still needed "
            "(tests/integration/test_resilience.py), then update WRITTEN_FOR and the bounds "
            "in pyproject.toml"
        )
        log.warning(message)
        warnings.append(message)
    return warnings


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
            log.info("broker connection lost while waiting for a message; closing the channel")
            original(self)

    setattr(close, _PATCHED, True)
    close.__doc__ = original.__doc__
    kombu_redis.Channel.close = close  # type: ignore[method-assign]


def keep_messages_taken_before_a_broker_loss() -> None:
    """Run a message that the worker took from Redis just before the connection broke.

    kombu's Redis transport takes a message with ``BRPOP`` and then, in a second command,
    records it as unacknowledged. When the connection breaks between the two, the record
    fails and kombu drops the message: it is in no queue, in no unacknowledged set, and no
    worker runs it. The task was accepted, yet it is lost. The window is narrow; the
    integration test opens it on purpose by killing Redis between the two commands.

    The patch keeps such a message in the channel's in-memory bookkeeping and hands it to
    the worker as usual. It then runs; only its redelivery, should this worker also die, is
    missing, and the execution's lease covers that (the reaper re-enqueues a run whose
    lease lapsed). A duplicate delivery meets the lease too, so nothing runs twice.
    """
    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual

    original = kombu_redis.QoS.append
    if getattr(original, _PATCHED, False):
        return

    def append(self: Any, message: Any, delivery_tag: Any) -> None:
        try:
            original(self, message, delivery_tag)
        except self.channel.connection_errors:
            log.warning(
                "broker connection lost just after message %s was taken; running it anyway "
                "(its lease covers redelivery)",
                delivery_tag,
            )
            virtual.QoS.append(self, message, delivery_tag)

    setattr(append, _PATCHED, True)
    append.__doc__ = original.__doc__
    kombu_redis.QoS.append = append  # type: ignore[method-assign]
