"""The per-host pool of session subnets, kept in Redis.

A stock engine hands out user networks from a few default pools and runs out
after about 30. Each session network therefore gets a small subnet carved from
``Settings.session_subnet_pool`` (a /26 of 10.213.0.0/16 by default: 1024
networks per host), allocated atomically in Redis per host and released when the
network is removed. Subnets that overlap the host's routes are skipped.

Only Redis is touched here; creating the network itself is
:func:`orchestrator.worker.networks.ensure_network`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from orchestrator.errors import NetworkPoolExhausted
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = ["SubnetPool", "host_routes"]


@lru_cache(maxsize=1)
def host_routes() -> tuple[ipaddress.IPv4Network, ...]:
    """Destinations of the host's IPv4 routes (from /proc/net/route), default route excluded.

    Returns:
        The routed networks; empty when the table cannot be read.
    """
    routes = []
    try:
        with open("/proc/net/route") as table:
            next(table)
            for line in table:
                fields = line.split()
                dest, mask = int(fields[1], 16), int(fields[7], 16)
                if mask == 0:
                    continue
                address = ipaddress.IPv4Address(dest.to_bytes(4, "little"))
                netmask = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
                routes.append(ipaddress.IPv4Network(f"{address}/{netmask}", strict=False))
    except (OSError, ValueError, StopIteration):
        return ()
    return tuple(routes)


class SubnetPool:
    """Per-host allocation of session subnets, shared through Redis.

    Args:
        redis: a redis-py client.
        host_name: the Docker host whose pool this is.
        pool: the address range carved up (e.g. ``10.213.0.0/16``).
        prefix: size of each subnet (e.g. 26).
        avoid: networks that must not be used (the host's routes by default).
    """

    def __init__(
        self,
        redis: Any,
        host_name: str,
        pool: str,
        prefix: int,
        avoid: tuple[ipaddress.IPv4Network, ...] | None = None,
    ) -> None:
        self.redis = redis
        self.host_name = host_name
        self.pool = ipaddress.IPv4Network(pool)
        self.prefix = prefix
        self.size = 2 ** (prefix - self.pool.prefixlen) if prefix >= self.pool.prefixlen else 0
        self.avoid = host_routes() if avoid is None else avoid

    @classmethod
    def for_settings(cls, redis: Any, settings: Settings) -> SubnetPool:
        """The pool of this worker's host.

        Args:
            redis: a redis-py client.
            settings: the worker's settings (host name, pool and prefix).

        Returns:
            The host's pool.
        """
        return cls(
            redis, settings.host_name, settings.session_subnet_pool, settings.session_subnet_prefix
        )

    def subnet(self, index: int) -> ipaddress.IPv4Network:
        """Subnet number ``index`` of the pool."""
        step = 2 ** (32 - self.prefix)
        base = int(self.pool.network_address) + index * step
        return ipaddress.IPv4Network(f"{ipaddress.IPv4Address(base)}/{self.prefix}")

    def current(self, session_id: str) -> int | None:
        """The subnet index a session holds on this host, if any."""
        value = text(self.redis.get(keys.session_subnet(self.host_name, session_id)))
        return int(value) if value is not None else None

    def allocate(self, session_id: str, skip: set[int] | None = None) -> int:
        """Reserve a free subnet for ``session_id`` (the same one on repeated calls).

        Args:
            session_id: the session the subnet is for.
            skip: indices not to hand out (subnets the engine refused); a session holding
                one of them is moved to another, and the one it held is freed.

        Returns:
            The index of the session's subnet.

        Raises:
            NetworkPoolExhausted: every subnet is taken.
        """
        held = self.current(session_id)
        if held is not None and not (skip and held in skip):
            return held
        start = int(self.redis.incr(keys.subnet_cursor(self.host_name))) % max(self.size, 1)
        for offset in range(self.size):
            index = (start + offset) % self.size
            if skip and index in skip:
                continue
            if any(self.subnet(index).overlaps(route) for route in self.avoid):
                continue
            if self.redis.set(keys.subnet(self.host_name, index), session_id, nx=True):
                self.redis.set(keys.session_subnet(self.host_name, session_id), index)
                if held is not None and held != index:
                    self._free(held, session_id)
                return index
        raise NetworkPoolExhausted(
            f"no free subnet in {self.pool} (/{self.prefix}) on host {self.host_name}; "
            "clean up sessions or widen ORCHESTRATOR_SESSION_SUBNET_POOL"
        )

    def _free(self, index: int, session_id: str) -> None:
        if text(self.redis.get(keys.subnet(self.host_name, index))) == session_id:
            self.redis.delete(keys.subnet(self.host_name, index))

    def release(self, session_id: str) -> None:
        """Give a session's subnet back to the pool."""
        index = self.current(session_id)
        if index is None:
            return
        owner = text(self.redis.get(keys.subnet(self.host_name, index)))
        pipe = self.redis.pipeline()
        if owner == session_id:
            pipe.delete(keys.subnet(self.host_name, index))
        pipe.delete(keys.session_subnet(self.host_name, session_id))
        pipe.execute()
