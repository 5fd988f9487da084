"""Every Redis key the registry uses, in one place."""

from __future__ import annotations

PREFIX = "orch:"

INFLIGHT = PREFIX + "inflight"
HOSTS = PREFIX + "hosts"
JANITOR_LAST_RUN = PREFIX + "janitor:last-run"  # string: JSON summary of the last pass
HOSTS_LAST_SEEN = PREFIX + "hosts:last-seen"  # hash: host name -> unix time of its last beat


def execution(execution_id: str) -> str:
    """Hash: state of one tool execution (host, container, status, redacted request)."""
    return f"{PREFIX}exec:{execution_id}"


def execution_result(execution_id: str) -> str:
    """String: the final ToolExecutionResult as JSON."""
    return f"{PREFIX}exec:{execution_id}:result"


def collected_file(execution_id: str, index: int) -> str:
    """String: the bytes of a run's collected file too large to keep in its result."""
    return f"{PREFIX}file:{execution_id}:{index}"


def relic_exec_result(exec_id: str) -> str:
    """String: the final ExecResult of a command run in a relic, as JSON."""
    return f"{PREFIX}relic-exec:{exec_id}:result"


def lease(execution_id: str) -> str:
    """String with TTL: the token of the worker running an execution."""
    return f"{PREFIX}lease:{execution_id}"


def requeued(execution_id: str) -> str:
    """String with TTL: an expired execution was re-enqueued (stops double re-enqueue)."""
    return f"{PREFIX}requeued:{execution_id}"


def last_holder(execution_id: str) -> str:
    """String with TTL: the token of the worker that last took an execution's lease."""
    return f"{PREFIX}lease-holder:{execution_id}"


def worker_alive(owner: str) -> str:
    """String with TTL: a worker process (by lease token) renewed its leases lately."""
    return f"{PREFIX}worker:{owner}"


def cancel(execution_id: str) -> str:
    """String with TTL: cancellation was asked for an execution."""
    return f"{PREFIX}cancel:{execution_id}"


def logs(execution_id: str) -> str:
    """Stream: live stdout/stderr lines of an execution."""
    return f"{PREFIX}logs:{execution_id}"


def host(name: str) -> str:
    """String with TTL: heartbeat of a Docker host's worker."""
    return f"{PREFIX}host:{name}"


def session_owner(session_id: str) -> str:
    """String: the host that owns a session's network and relics."""
    return f"{PREFIX}session:{session_id}:owner"


def session_hosts(session_id: str) -> str:
    """Set: every host a session's containers ran on."""
    return f"{PREFIX}session:{session_id}:hosts"


def session_relics(session_id: str) -> str:
    """Set: relic ids of a session."""
    return f"{PREFIX}session:{session_id}:relics"


def session_expiry(session_id: str) -> str:
    """Hash: created_at and expires_at of a session (TTL and keepalive)."""
    return f"{PREFIX}session:{session_id}:expiry"


SESSIONS = PREFIX + "sessions"

METRICS_BY_STATUS = PREFIX + "metrics:by_status"  # hash: status -> count of finished runs
METRICS_BY_TOOL = PREFIX + "metrics:by_tool"  # hash: tool_name -> count of finished runs
METRICS_DURATIONS = PREFIX + "metrics:durations"  # list: last durations (seconds), newest first
DURATIONS_KEPT = 1000


def subnet_cursor(host_name: str) -> str:
    """Counter: where the next subnet search of a host starts."""
    return f"{PREFIX}subnet-cursor:{host_name}"


def relic(relic_id: str) -> str:
    """Hash: a relic's registry entry (name, session, host, container)."""
    return f"{PREFIX}relic:{relic_id}"


def subnet(host_name: str, index: int) -> str:
    """String: which session holds subnet number ``index`` of a host's pool."""
    return f"{PREFIX}subnet:{host_name}:{index}"


def session_subnet(host_name: str, session_id: str) -> str:
    """String: the subnet index a session's network uses on a host."""
    return f"{PREFIX}session-subnet:{host_name}:{session_id}"


def lock(name: str) -> str:
    """A redis-py lock (image pulls and builds per host)."""
    return f"{PREFIX}lock:{name}"


def pool(host_name: str, spec_key: str) -> str:
    """Set: ids of idle warm-pool containers of one pool on one host."""
    return f"{PREFIX}pool:{host_name}:{spec_key}"


def pool_demand(host_name: str, spec_key: str) -> str:
    """Sorted set: recent arrivals (score: time) of runs one pool of one host could serve."""
    return f"{PREFIX}pool-demand:{host_name}:{spec_key}"


def pool_specs(host_name: str) -> str:
    """Hash: spec key -> PoolSpec JSON of the pools demand made on one host."""
    return f"{PREFIX}pool-specs:{host_name}"


def pool_lock(host_name: str) -> str:
    """String with TTL: the worker process sizing a host's pools right now."""
    return f"{PREFIX}pool-lock:{host_name}"
