"""Quotas kept in Redis: what one session and one host may hold at once.

Every container a request makes is a *holder* (its execution id or relic id) in two
hashes: its session's and its host's. Each entry says the holder's kind (``tool`` or
``relic``), the memory limit it committed (MB), when it expires and the other scope's
name. :meth:`Quotas.acquire` checks and writes both hashes in one Lua script, so two
concurrent requests can never both pass the last free slot. Holders are released when
their run finishes, their relic is removed or their session is cleaned up; a worker that
dies holding one leaves an entry that expires by itself (a tool run at its deadline, a
relic start after its health timeout, a healthy relic at its session's hard end), so
the counts heal without the dead worker.

The quotas (each a setting, named in every refusal):

- ``session_max_containers``: tool runs in flight and relics of one session;
- ``session_max_relics``: relics of one session;
- ``session_max_memory_mb``: memory limits committed by one session's containers;
- ``host_max_memory_mb``: memory limits committed on one host (0: its physical memory),
  an image build's ``build_memory_mb`` included while it runs (:meth:`Quotas.building`);
- ``host_max_relic_starts``: relic starts at once per host (each holds a worker thread
  until its relic is healthy, up to its health timeout): :meth:`Quotas.relic_start`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal

from orchestrator.errors import QuotaExceeded
from orchestrator.settings import Settings
from orchestrator.state.keys import PREFIX
from orchestrator.state.registry import text

__all__ = [
    "Quotas",
    "HolderKind",
    "release_session",
    "physical_memory_mb",
    "session_key",
    "host_key",
    "starts_key",
]

HolderKind = Literal["tool", "relic"]
#: The kind of a host entry held by an image build (it counts memory only).
BUILD_KIND = "build"
HOST_PREFIX = f"{PREFIX}quota:host:"
#: A key outlives its last holder's expiry by this much (a margin for clock skew).
KEY_MARGIN_SECONDS = 60
#: No quota at all (a host whose physical memory cannot be read).
UNLIMITED = 2**53


def session_key(session_id: str) -> str:
    """Hash: holder -> ``kind|memory_mb|expires_at|host`` of one session."""
    return f"{PREFIX}quota:session:{session_id}"


def host_key(host_name: str) -> str:
    """Hash: holder -> ``kind|memory_mb|expires_at|session`` of one host."""
    return f"{HOST_PREFIX}{host_name}"


def starts_key(host_name: str) -> str:
    """Sorted set: relic starts under way on one host, scored by their expiry."""
    return f"{PREFIX}quota:relic-starts:{host_name}"


# A hash pruned of expired entries and counted without the holder itself (so taking a
# holder again, as a resumed run does, never counts it twice): {holders, relics, MB, latest
# expiry}; builds count memory, not containers.
_SCAN = """
local function scan(key, holder, now)
  local count, relics, total, latest = 0, 0, 0, 0
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    local k, m, e = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|')
    e = tonumber(e) or 0
    if e <= now then
      redis.call('HDEL', key, name)
    elseif name ~= holder then
      if k ~= 'build' then count = count + 1 end
      if k == 'relic' then relics = relics + 1 end
      total = total + (tonumber(m) or 0)
      if e > latest then latest = e end
    end
  end
  return {count, relics, total, latest}
end
"""

# Both hashes are scanned, checked, then written.
_ACQUIRE = (
    _SCAN
    + """
local holder, kind, mb = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, expires = tonumber(ARGV[4]), tonumber(ARGV[5])
local s = scan(KEYS[1], holder, now)
local h = scan(KEYS[2], holder, now)
if ARGV[6] == '1' then
  if s[1] + 1 > tonumber(ARGV[7]) then return {'containers', s[1]} end
  if kind == 'relic' and s[2] + 1 > tonumber(ARGV[8]) then return {'relics', s[2]} end
  if s[3] + mb > tonumber(ARGV[9]) then return {'session_memory', s[3]} end
  if h[3] + mb > tonumber(ARGV[10]) then return {'host_memory', h[3]} end
end
local previous = redis.call('HGET', KEYS[1], holder)
if previous then
  local old = string.match(previous, '|([^|]*)$')
  if old and ARGV[13] .. old ~= KEYS[2] then redis.call('HDEL', ARGV[13] .. old, holder) end
end
redis.call('HSET', KEYS[1], holder, ARGV[11])
redis.call('HSET', KEYS[2], holder, ARGV[12])
redis.call('EXPIREAT', KEYS[1], math.ceil(math.max(s[4], expires)) + 60)
redis.call('EXPIREAT', KEYS[2], math.ceil(math.max(h[4], expires)) + 60)
return {'ok', 0}
"""
)

# A build's memory on its host alone (a build belongs to no session).
_BUILD = (
    _SCAN
    + """
local holder, mb, now, expires = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = scan(KEYS[1], holder, now)
if h[3] + mb > tonumber(ARGV[5]) then return {'host_memory', h[3]} end
redis.call('HSET', KEYS[1], holder, ARGV[6])
redis.call('EXPIREAT', KEYS[1], math.ceil(math.max(h[4], expires)) + 60)
return {'ok', 0}
"""
)

_RELEASE = """
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if previous then
  local host = string.match(previous, '|([^|]*)$')
  if host then redis.call('HDEL', ARGV[2] .. host, ARGV[1]) end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

_RELEASE_SESSION = """
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
  local host = string.match(raw[i + 1], '|([^|]*)$')
  if host then redis.call('HDEL', ARGV[1] .. host, raw[i]) end
end
redis.call('DEL', KEYS[1])
return #raw / 2
"""

_START = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if not held and count >= tonumber(ARGV[4]) then return count end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 60)
return -1
"""


@lru_cache(maxsize=1)
def physical_memory_mb() -> int:
    """This machine's memory in MB (``MemTotal`` of /proc/meminfo); 0 when unreadable.

    The worker runs beside its engine (a container sees the host's /proc/meminfo), so this
    is the engine's memory; a worker driving a remote engine sets ``host_max_memory_mb``.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Quotas:
    """The quotas of one worker's host, in the registry's Redis.

    Args:
        redis: a redis-py client.
        settings: the worker's settings (its host name and the quotas).
    """

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.host = settings.host_name

    @property
    def host_memory_mb(self) -> int:
        """The host's memory quota: the setting, else the physical memory, else none."""
        return self.settings.host_max_memory_mb or physical_memory_mb() or UNLIMITED

    def acquire(
        self,
        holder: str,
        *,
        session_id: str,
        kind: HolderKind,
        memory_mb: int,
        expires_at: float,
        enforce: bool = True,
    ) -> None:
        """Count ``holder`` in its session's and this host's quotas until ``expires_at``.

        Taking a holder again (a resumed run, a relic that became healthy) replaces its
        entry; it is never counted twice.

        Args:
            holder: the execution or relic id.
            session_id: its session.
            kind: ``tool`` or ``relic``.
            memory_mb: the memory limit its container commits.
            expires_at: unix time after which the entry no longer counts.
            enforce: False to only write the entry (a new expiry for one already counted).

        Raises:
            QuotaExceeded: naming the quota, its setting and what holds it.
        """
        settings = self.settings
        expires = math.ceil(expires_at)
        reply = self.redis.eval(
            _ACQUIRE,
            2,
            session_key(session_id),
            host_key(self.host),
            holder,
            kind,
            memory_mb,
            math.floor(time.time()),
            expires,
            "1" if enforce else "0",
            settings.session_max_containers,
            settings.session_max_relics,
            settings.session_max_memory_mb,
            self.host_memory_mb,
            f"{kind}|{memory_mb}|{expires}|{self.host}",
            f"{kind}|{memory_mb}|{expires}|{session_id}",
            HOST_PREFIX,
        )
        verdict, used = text(reply[0]), int(reply[1])
        if verdict != "ok":
            raise QuotaExceeded(self._refusal(verdict or "", used, session_id, kind, memory_mb))

    def _refusal(self, quota: str, used: int, session_id: str, kind: HolderKind, mb: int) -> str:
        settings = self.settings
        if quota == "containers":
            return (
                f"session_id: session {session_id!r} already holds {used} containers (tool runs "
                f"in flight and relics), its quota {settings.session_max_containers} "
                "(ORCHESTRATOR_SESSION_MAX_CONTAINERS); wait for a run to end or remove a relic"
            )
        if quota == "relics":
            return (
                f"session_id: session {session_id!r} already has {used} relics, its quota "
                f"{settings.session_max_relics} (ORCHESTRATOR_SESSION_MAX_RELICS); remove one "
                "first"
            )
        if quota == "session_memory":
            return (
                f"resource_limits.memory_mb: {mb} MB more would commit {used + mb} MB to "
                f"session {session_id!r}, above its quota {settings.session_max_memory_mb} MB "
                "(ORCHESTRATOR_SESSION_MAX_MEMORY_MB)"
            )
        return (
            f"resource_limits.memory_mb: {mb} MB more would commit {used + mb} MB on host "
            f"{self.host!r}, above its quota {self.host_memory_mb} MB "
            "(ORCHESTRATOR_HOST_MAX_MEMORY_MB; 0 means the host's physical memory); try "
            f"again when its runs end (this {kind} asked {mb} MB)"
        )

    def release(self, holder: str, session_id: str) -> None:
        """Stop counting ``holder`` (idempotent)."""
        self.redis.eval(
            _RELEASE, 2, session_key(session_id), host_key(self.host), holder, HOST_PREFIX
        )

    @contextmanager
    def holding(
        self, holder: str, *, session_id: str, kind: HolderKind, memory_mb: int, expires_at: float
    ) -> Iterator[None]:
        """:meth:`acquire` for the time of a ``with`` block, released however it ends."""
        self.acquire(
            holder, session_id=session_id, kind=kind, memory_mb=memory_mb, expires_at=expires_at
        )
        try:
            yield
        finally:
            self.release(holder, session_id)

    @contextmanager
    def relic_start(self, holder: str, expires_at: float) -> Iterator[None]:
        """Hold one of this host's ``host_max_relic_starts`` slots during a ``with`` block.

        Raises:
            QuotaExceeded: every slot is taken (naming the setting).
        """
        key = starts_key(self.host)
        limit = self.settings.host_max_relic_starts
        count = int(
            self.redis.eval(
                _START, 1, key, holder, math.ceil(expires_at), math.floor(time.time()), limit
            )
        )
        if count >= 0:
            raise QuotaExceeded(
                f"host {self.host!r} is already starting {count} relics, its quota {limit} "
                "(ORCHESTRATOR_HOST_MAX_RELIC_STARTS: each start holds a worker thread until "
                "its relic is healthy); try again when one is up"
            )
        try:
            yield
        finally:
            self.redis.zrem(key, holder)

    @contextmanager
    def building(self, holder: str, memory_mb: int, expires_at: float) -> Iterator[None]:
        """Count an image build's memory in this host's committed memory during a ``with``
        block (its ``RUN`` steps may use that much; a build belongs to no session).

        Args:
            holder: names the build (its tag): one entry per build under way.
            memory_mb: the memory limit of its ``RUN`` steps (``build_memory_mb``).
            expires_at: unix time after which the entry no longer counts (a dead worker's).

        Raises:
            QuotaExceeded: the host's memory quota has no room for it, naming both settings.
        """
        key = host_key(self.host)
        expires = math.ceil(expires_at)
        reply = self.redis.eval(
            _BUILD,
            1,
            key,
            holder,
            memory_mb,
            math.floor(time.time()),
            expires,
            self.host_memory_mb,
            f"{BUILD_KIND}|{memory_mb}|{expires}|",
        )
        if text(reply[0]) != "ok":
            used = int(reply[1])
            raise QuotaExceeded(
                f"build: its RUN steps' {memory_mb} MB (ORCHESTRATOR_BUILD_MEMORY_MB) would "
                f"commit {used + memory_mb} MB on host {self.host!r}, above its quota "
                f"{self.host_memory_mb} MB (ORCHESTRATOR_HOST_MAX_MEMORY_MB; 0 means the host's "
                "physical memory); try again when its runs end"
            )
        try:
            yield
        finally:
            self.redis.hdel(key, holder)

    def session_usage(self, session_id: str) -> dict[str, int]:
        """What a session holds now: ``{"containers", "relics", "memory_mb"}``."""
        return _usage(self.redis.hgetall(session_key(session_id)))

    def host_usage(self) -> dict[str, int]:
        """What this host holds now: ``{"containers", "relics", "memory_mb"}`` (the memory of
        builds under way included)."""
        return _usage(self.redis.hgetall(host_key(self.host)))


def release_session(redis: Any, session_id: str) -> int:
    """Stop counting every holder of a session, on every host (after its cleanup).

    Returns:
        How many holders were released.
    """
    return int(redis.eval(_RELEASE_SESSION, 1, session_key(session_id), HOST_PREFIX))


def _usage(raw: dict[Any, Any]) -> dict[str, int]:
    now = time.time()
    usage = {"containers": 0, "relics": 0, "memory_mb": 0}
    for value in raw.values():
        kind, memory, expires, _ = (text(value) or "").split("|", 3)
        if float(expires or 0) <= now:
            continue
        usage["containers"] += kind != BUILD_KIND
        usage["relics"] += kind == "relic"
        usage["memory_mb"] += int(memory or 0)
    return usage
