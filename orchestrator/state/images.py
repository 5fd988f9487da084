"""Which images the orchestrator pulled on each host, and when each image was last used.

The janitor may remove only images the orchestrator brought to a host: the ones it
built carry its labels; the ones it pulled are remembered here, per host, because a
pulled image carries its publisher's labels, not ours. An image the host had before
(the operator's own) is never recorded as pulled, so it is never removed.

Keys (per host name):

- ``orch:images:pulled:<host>`` — set of image references the orchestrator pulled there;
- ``orch:images:used:<host>`` — sorted set: image reference -> unix time of its last use
  (a run or a build resolving it, or its pull).
"""

from __future__ import annotations

from typing import Any

from orchestrator.state.keys import PREFIX
from orchestrator.state.registry import text

__all__ = [
    "pulled_key",
    "used_key",
    "record_pull",
    "record_use",
    "pulled",
    "last_used",
    "forget",
]


def pulled_key(host: str) -> str:
    """Set: references of the images the orchestrator pulled on ``host``."""
    return f"{PREFIX}images:pulled:{host}"


def used_key(host: str) -> str:
    """Sorted set: image reference -> unix time it was last used on ``host``."""
    return f"{PREFIX}images:used:{host}"


def record_pull(redis: Any, host: str, ref: str, now: float) -> None:
    """Remember that the orchestrator pulled ``ref`` on ``host`` (and used it now)."""
    pipe = redis.pipeline()
    pipe.sadd(pulled_key(host), ref)
    pipe.zadd(used_key(host), {ref: now})
    pipe.execute()


def record_use(redis: Any, host: str, ref: str, now: float) -> None:
    """Note that a run or a build on ``host`` used ``ref`` at ``now``."""
    redis.zadd(used_key(host), {ref: now})


def pulled(redis: Any, host: str) -> set[str]:
    """The references the orchestrator pulled on ``host`` (and has not forgotten)."""
    return {text(raw) or "" for raw in redis.smembers(pulled_key(host))} - {""}


def last_used(redis: Any, host: str) -> dict[str, float]:
    """Reference -> last use (unix time) of every image used on ``host``."""
    return {
        text(ref) or "": float(score)
        for ref, score in redis.zrange(used_key(host), 0, -1, withscores=True)
    }


def forget(redis: Any, host: str, refs: list[str]) -> None:
    """Drop ``refs`` (removed, or gone from the host) from both records."""
    if not refs:
        return
    pipe = redis.pipeline()
    pipe.srem(pulled_key(host), *refs)
    pipe.zrem(used_key(host), *refs)
    pipe.execute()
