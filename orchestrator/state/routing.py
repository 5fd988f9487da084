"""Session affinity lookups: which host queue session-scoped work goes to.

Every worker consumes ``celery`` (Celery's default, so a plain client with no
routing can ``send_task`` by name), ``tools``, ``relics`` and its own
``host.<name>``. Session-scoped work goes to the queue of the host that owns
the session.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import HostUnavailable
from orchestrator.protocol import host_queue
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["session_owner", "queue_for"]


def session_owner(redis: Any, session_id: str) -> str | None:
    """The host that owns a session, or None before its first relic or session tool."""
    return text(redis.get(keys.session_owner(session_id)))


def queue_for(redis: Any, session_id: str | None, default: str) -> str:
    """Where session-scoped work should go: the owner's host queue, else ``default``.

    Raises:
        HostUnavailable: the session's host has no live worker (the message would wait
            forever on its queue).
    """
    if session_id:
        owner = session_owner(redis, session_id)
        if owner:
            if not redis.exists(keys.host(owner)):
                raise HostUnavailable(
                    f"session_id: session {session_id!r} lives on host {owner!r}, which has no "
                    "live worker; start a worker there or clean the session up"
                )
            return host_queue(owner)
    return default
