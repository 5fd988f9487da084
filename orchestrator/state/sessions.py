"""Sessions: which host owns a session, which hosts it touched, and its lifetime.

Bridge networks are local to one Docker host, so a session's relics and the
tools that join its network run on one host. The first session-scoped task
claims the session for its host with ``SET NX``; later ones that land elsewhere
raise :class:`~orchestrator.errors.WrongHost` and forward themselves.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = [
    "SessionHost",
    "claim",
    "require_owner",
    "record_host",
    "hosts_of",
    "touch",
    "expiry",
    "forget",
]


class SessionHost(Protocol):
    """What the session functions need of a worker's runtime (a
    :class:`~orchestrator.worker.runtime.Runtime` is one)."""

    @property
    def redis(self) -> Any:
        """A redis-py client."""

    @property
    def settings(self) -> Settings:
        """The worker's settings."""

    @property
    def host_name(self) -> str:
        """This worker's Docker host name."""

    def require_local(self, owner: str, what: str, hint: str = "") -> None:
        """Raise WrongHost / HostUnavailable unless ``owner`` is this host (or empty)."""


def claim(redis: Any, session_id: str, host_name: str) -> str:
    """Claim ``session_id`` for ``host_name`` unless owned already; return the owner."""
    key = keys.session_owner(session_id)
    if redis.set(key, host_name, nx=True):
        return host_name
    return text(redis.get(key)) or host_name


def require_owner(rt: SessionHost, session_id: str) -> None:
    """Make sure this host owns the session, claiming it if nobody does.

    Raises:
        WrongHost: another live host owns it (the caller forwards the task).
        HostUnavailable: the owning host has no live worker.
    """
    owner = claim(rt.redis, session_id, rt.host_name)
    rt.require_local(
        owner,
        f"session_id: session {session_id!r}",
        hint="start a worker there or clean the session up",
    )


def record_host(rt: SessionHost, session_id: str) -> None:
    """Remember that the session has containers on this host; start its clock."""
    now = time.time()
    pipe = rt.redis.pipeline()
    pipe.sadd(keys.session_hosts(session_id), rt.host_name)
    pipe.sadd(keys.SESSIONS, session_id)
    pipe.hsetnx(keys.session_expiry(session_id), "created_at", now)
    pipe.hsetnx(
        keys.session_expiry(session_id), "expires_at", now + rt.settings.session_ttl_seconds
    )
    pipe.execute()


def hosts_of(redis: Any, session_id: str) -> list[str]:
    """Every host the session touched."""
    return sorted(text(h) or "" for h in redis.smembers(keys.session_hosts(session_id)))


def expiry(redis: Any, session_id: str) -> dict[str, float]:
    """The session's created_at and expires_at (unix times); empty when unknown."""
    raw = redis.hgetall(keys.session_expiry(session_id))
    return {text(k) or "": float(text(v) or 0) for k, v in raw.items()}


def touch(redis: Any, session_id: str, extend_seconds: float, max_lifetime_seconds: float) -> float:
    """Push the session's expiry to now + extend_seconds (never earlier than it was),
    but never past created_at + max_lifetime_seconds.

    Returns:
        The new expires_at.
    """
    now = time.time()
    times = expiry(redis, session_id)
    created = times.get("created_at", now)
    wanted = max(now + extend_seconds, times.get("expires_at", 0.0))
    expires = min(wanted, created + max_lifetime_seconds)
    pipe = redis.pipeline()
    pipe.hsetnx(keys.session_expiry(session_id), "created_at", created)
    pipe.hset(keys.session_expiry(session_id), "expires_at", expires)
    pipe.sadd(keys.SESSIONS, session_id)
    pipe.execute()
    return expires


def forget(redis: Any, session_id: str) -> None:
    """Drop every registry entry of a session (after its cleanup)."""
    pipe = redis.pipeline()
    pipe.delete(
        keys.session_owner(session_id),
        keys.session_hosts(session_id),
        keys.session_relics(session_id),
        keys.session_expiry(session_id),
    )
    pipe.srem(keys.SESSIONS, session_id)
    pipe.execute()
