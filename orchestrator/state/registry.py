"""Redis state shared by workers and clients: executions, hosts alive, cancellations.

Session and relic state lives in :mod:`orchestrator.state.sessions`. Secrets never
enter the registry: requests are stored redacted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.models import ToolExecutionResult
from orchestrator.state import keys

__all__ = ["ExecutionEntry", "ExecutionRegistry", "HostRegistry", "text"]


def text(value: Any) -> str | None:
    """Decode a Redis reply (bytes or str) to str."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class ExecutionEntry:
    """The registry hash of one execution (a tool run, or a relic start in flight), typed.

    An execution the registry does not know reads as an entry whose ``known`` is False.
    """

    known: bool = False
    #: ``running`` while a worker holds it, ``finished`` once its result is stored
    state: str = ""
    #: the final status, once finished
    status: str = ""
    host: str = ""
    container_id: str = ""
    #: it ran by exec in a warm-pool container (its output cannot be recovered)
    pooled: bool = False
    #: that pool container was made for it (a miss on a busy worker), not taken idle
    made_now: bool = False
    #: the request as JSON, secrets masked (what the reaper re-sends)
    request: str = ""
    #: the task name, when not a tool run (relic starts are in flight work too)
    task: str = ""
    has_secrets: bool = False
    tool_name: str = ""
    session_id: str = ""

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> ExecutionEntry:
        """Read the hash as stored (unknown fields are ignored, missing ones empty)."""
        return cls(
            known=bool(raw),
            state=raw.get("state", ""),
            status=raw.get("status", ""),
            host=raw.get("host", ""),
            container_id=raw.get("container_id", ""),
            pooled=bool(raw.get("pooled")),
            made_now=bool(raw.get("made_now")),
            request=raw.get("request", ""),
            task=raw.get("task", ""),
            has_secrets=bool(raw.get("has_secrets")),
            tool_name=raw.get("tool_name", ""),
            session_id=raw.get("session_id", ""),
        )

    @property
    def finished(self) -> bool:
        """True once the execution's result is stored."""
        return self.state == "finished"


class ExecutionRegistry:
    """In-flight executions, their final results and cancellation flags."""

    def __init__(self, redis: Any, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    def start(self, execution_id: str, fields: dict[str, Any]) -> None:
        """Record that an execution is running and keep it in the in-flight set."""
        mapping = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        mapping["state"] = "running"
        pipe = self.redis.pipeline()
        pipe.hset(keys.execution(execution_id), mapping=mapping)
        pipe.expire(keys.execution(execution_id), self.ttl_seconds)
        pipe.sadd(keys.INFLIGHT, execution_id)
        pipe.execute()

    def update(self, execution_id: str, **fields: str) -> None:
        """Set fields of a running execution (container id, status, ...)."""
        self.redis.hset(keys.execution(execution_id), mapping=fields)

    def get(self, execution_id: str) -> ExecutionEntry:
        """The execution's registry entry (``known`` is False when there is none)."""
        raw = self.redis.hgetall(keys.execution(execution_id))
        return ExecutionEntry.from_hash({text(k) or "": text(v) or "" for k, v in raw.items()})

    def finish(self, result: ToolExecutionResult) -> None:
        """Store the final result and drop the execution from the in-flight set."""
        execution_id = result.execution_id
        pipe = self.redis.pipeline()
        pipe.set(keys.execution_result(execution_id), result.model_dump_json(), ex=self.ttl_seconds)
        pipe.hset(
            keys.execution(execution_id), mapping={"state": "finished", "status": result.status}
        )
        pipe.srem(keys.INFLIGHT, execution_id)
        pipe.hincrby(keys.METRICS_BY_STATUS, result.status, 1)
        pipe.hincrby(keys.METRICS_BY_TOOL, result.tool_name, 1)
        if result.duration_seconds is not None:
            pipe.lpush(keys.METRICS_DURATIONS, result.duration_seconds)
            pipe.ltrim(keys.METRICS_DURATIONS, 0, keys.DURATIONS_KEPT - 1)
        pipe.execute()

    def result(self, execution_id: str) -> ToolExecutionResult | None:
        """The stored final result, if the execution finished."""
        raw = self.redis.get(keys.execution_result(execution_id))
        return None if raw is None else ToolExecutionResult.model_validate_json(raw)

    def forget(self, execution_id: str) -> None:
        """Drop an execution from the in-flight set without a result."""
        self.redis.srem(keys.INFLIGHT, execution_id)

    def inflight(self) -> list[str]:
        """Ids of executions that started and have no final result yet."""
        return sorted(text(m) or "" for m in self.redis.smembers(keys.INFLIGHT))

    def request_cancel(self, execution_id: str) -> None:
        """Flag an execution for cancellation (seen by its wait loop, on any host)."""
        self.redis.set(keys.cancel(execution_id), str(time.time()), ex=self.ttl_seconds)

    def cancel_requested(self, execution_id: str) -> bool:
        """True when cancellation was asked."""
        return bool(self.redis.exists(keys.cancel(execution_id)))

    def mark_requeued(self, execution_id: str, hold_seconds: int) -> bool:
        """Claim the right to re-enqueue an execution; False if someone just did."""
        return bool(
            self.redis.set(keys.requeued(execution_id), "1", nx=True, ex=max(1, hold_seconds))
        )


class HostRegistry:
    """Heartbeats of Docker hosts: which hosts have a live worker."""

    def __init__(self, redis: Any, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds

    def beat(self, host_name: str, info: dict[str, Any]) -> None:
        """Say that ``host_name`` has a live worker (expires after the TTL)."""
        payload = json.dumps({**info, "seen_at": time.time()})
        pipe = self.redis.pipeline()
        pipe.set(keys.host(host_name), payload, ex=self.ttl_seconds)
        pipe.sadd(keys.HOSTS, host_name)
        pipe.hset(keys.HOSTS_LAST_SEEN, host_name, time.time())
        pipe.execute()

    def leave(self, host_name: str) -> None:
        """A worker is stopping: stop advertising the host until another worker beats."""
        self.redis.delete(keys.host(host_name))

    def silent_for(self, host_name: str) -> float:
        """Seconds since the host's last heartbeat (infinity when never seen)."""
        seen = self.redis.hget(keys.HOSTS_LAST_SEEN, host_name)
        return time.time() - float(seen) if seen is not None else float("inf")

    def alive(self, host_name: str) -> bool:
        """True when the host's heartbeat is fresh."""
        return bool(self.redis.exists(keys.host(host_name)))

    def live_hosts(self) -> list[str]:
        """Every host with a fresh heartbeat, sorted."""
        names = sorted(text(m) or "" for m in self.redis.smembers(keys.HOSTS))
        if not names:
            return []
        flags = self.redis.pipeline()
        for name in names:
            flags.exists(keys.host(name))
        return [name for name, ok in zip(names, flags.execute(), strict=True) if ok]

    def info(self, host_name: str) -> dict[str, Any] | None:
        """The last heartbeat payload of a host, or None when it is gone."""
        raw = self.redis.get(keys.host(host_name))
        return None if raw is None else json.loads(raw)
