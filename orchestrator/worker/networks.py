"""Session networks: labelled bridge networks with subnets from our own pool.

A stock engine hands out user networks from a few default pools and runs out
after about 30. Each session network therefore gets a small subnet carved from
``Settings.session_subnet_pool`` (a /26 of 10.213.0.0/16 by default: 1024
networks per host), allocated atomically in Redis per host and released when the
network is removed. Subnets that overlap the host's routes are skipped.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache
from typing import Any

import docker.types

from orchestrator.core.specs import LABEL_PREFIX
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import ContainerNotFound, DockerError, NetworkPoolExhausted
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.registry import text

__all__ = [
    "network_name",
    "SubnetPool",
    "ensure_network",
    "remove_network",
    "host_routes",
]

log = logging.getLogger(__name__)


def network_name(session_id: str) -> str:
    """The session network's name: ``session_<session_id>``."""
    return f"session_{session_id}"


@lru_cache(maxsize=1)
def host_routes() -> tuple[ipaddress.IPv4Network, ...]:
    """Destinations of the host's IPv4 routes (from /proc/net/route), default route excluded."""
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
        """The pool of this worker's host."""
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


def _find(docker_client: Any, name: str) -> Any | None:
    with docker_errors(f"list networks named {name}"):
        found = docker_client.networks.list(names=[name])
    return next((n for n in found if n.name == name), None)


def ensure_network(
    docker_client: Any,
    redis: Any,
    settings: Settings,
    session_id: str,
    attempts: int = 8,
) -> Any:
    """The session's network on this host, created (with a pool subnet) if missing.

    Creation is serialized per host and session with a Redis lock, because the
    engine does not refuse two networks of the same name.

    Raises:
        NetworkPoolExhausted: no subnet is free.
        DockerError: the engine refused every subnet tried.
    """
    name = network_name(session_id)
    existing = _find(docker_client, name)
    if existing is not None:
        return existing
    pool = SubnetPool.for_settings(redis, settings)
    with redis.lock(keys.lock(f"network:{settings.host_name}:{session_id}"), timeout=60):
        existing = _find(docker_client, name)
        if existing is not None:
            return existing
        skip: set[int] = set()
        last_error: Exception | None = None
        for _ in range(attempts):
            index = pool.allocate(session_id, skip)
            try:
                return _create(docker_client, settings, session_id, pool.subnet(index))
            except DockerError as exc:
                if "overlap" not in str(exc).lower():
                    pool.release(session_id)
                    raise
                log.info("subnet %s is used outside our pool; trying another", pool.subnet(index))
                skip.add(index)
                last_error = exc
        pool.release(session_id)
        raise DockerError(f"could not create network {name}: {last_error}")


def _create(docker_client: Any, settings: Settings, session_id: str, subnet: Any) -> Any:
    gateway = str(next(subnet.hosts()))
    ipam = docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)]
    )
    labels = {
        LABEL_PREFIX + "managed": "true",
        LABEL_PREFIX + "kind": "session-network",
        LABEL_PREFIX + "session": session_id,
        LABEL_PREFIX + "host": settings.host_name,
    }
    with docker_errors(f"create network {network_name(session_id)}"):
        return docker_client.networks.create(
            network_name(session_id),
            driver="bridge",
            internal=not settings.session_egress,
            labels=labels,
            ipam=ipam,
            check_duplicate=True,
        )


def remove_network(docker_client: Any, redis: Any, settings: Settings, session_id: str) -> int:
    """Remove the session's network(s) on this host and release the subnet.

    Returns:
        How many networks were removed.
    """
    removed = 0
    with docker_errors(f"list networks of session {session_id}"):
        found = docker_client.networks.list(
            filters={
                "label": [f"{LABEL_PREFIX}session={session_id}", f"{LABEL_PREFIX}managed=true"]
            }
        )
    for network in found:
        try:
            with docker_errors(f"remove network {network.name}"):
                network.remove()
            removed += 1
        except ContainerNotFound:
            continue
    SubnetPool.for_settings(redis, settings).release(session_id)
    return removed
