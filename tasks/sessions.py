"""Session tasks: ``orchestrator.sessions.touch`` (keepalive)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestrator.errors import InvalidRequest
from orchestrator.protocol import Task, validate_id
from orchestrator.state import sessions
from tasks.runtime import get_runtime


@shared_task(name=Task.SESSIONS_TOUCH.value)
def touch(session_id: str, extend_seconds: float = 3600) -> dict[str, Any]:
    """Extend a session's life by ``extend_seconds``, up to the hard maximum lifetime.

    Returns ``{"session_id", "expires_at"}`` (unix time).
    """
    validate_id("session_id", session_id)
    if isinstance(extend_seconds, bool) or not isinstance(extend_seconds, int | float):
        raise InvalidRequest("extend_seconds: must be a number of seconds")
    if not 0 < extend_seconds <= 10 * 365 * 86400:
        raise InvalidRequest("extend_seconds: must be positive")
    rt = get_runtime()
    expires_at = sessions.touch(
        rt.redis, session_id, float(extend_seconds), rt.settings.session_max_lifetime_seconds
    )
    return {"session_id": session_id, "expires_at": expires_at}
