"""The relic registry: one typed entry per relic, and each session's set of relics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.errors import RelicNotFound
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["RelicEntry", "register", "lookup", "unregister"]


@dataclass(frozen=True)
class RelicEntry:
    """Where a relic lives and how it is reached (never its environment or secrets)."""

    relic_id: str
    relic_name: str
    session_id: str
    host: str
    container_name: str
    port: int = 8000
    health: str = "/health"
    #: the names (never the values) of the variables its secret parameters became
    secret_names: tuple[str, ...] = ()

    def to_hash(self) -> dict[str, str | int]:
        """The Redis hash fields, as stored since the first release (and the secret names)."""
        return {
            "secret_names": ",".join(self.secret_names),
            "relic_name": self.relic_name,
            "session_id": self.session_id,
            "host": self.host,
            "container_name": self.container_name,
            "port": self.port,
            "health": self.health,
        }


def register(redis: Any, entry: RelicEntry) -> None:
    """Record a relic and add it to its session's relics."""
    pipe = redis.pipeline()
    pipe.hset(keys.relic(entry.relic_id), mapping=entry.to_hash())
    pipe.sadd(keys.session_relics(entry.session_id), entry.relic_id)
    pipe.execute()


def lookup(redis: Any, relic_id: str) -> RelicEntry:
    """The registry entry of a relic.

    Raises:
        RelicNotFound: no relic has this id.
    """
    raw = {text(k) or "": text(v) or "" for k, v in redis.hgetall(keys.relic(relic_id)).items()}
    if not raw:
        raise RelicNotFound(f"relic_id: no relic {relic_id!r} (cleaned up, or never started)")
    try:
        port = int(raw.get("port") or 8000)
    except ValueError:
        port = 8000
    return RelicEntry(
        relic_id=relic_id,
        relic_name=raw.get("relic_name", ""),
        session_id=raw.get("session_id", ""),
        host=raw.get("host", ""),
        container_name=raw.get("container_name", ""),
        port=port,
        health=raw.get("health") or "/health",
        secret_names=tuple(name for name in raw.get("secret_names", "").split(",") if name),
    )


def unregister(redis: Any, relic_id: str, session_id: str) -> None:
    """Drop a relic's entry and its place in its session."""
    pipe = redis.pipeline()
    pipe.delete(keys.relic(relic_id))
    pipe.srem(keys.session_relics(session_id), relic_id)
    pipe.execute()
