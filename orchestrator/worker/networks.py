"""Session networks: labelled bridge networks, each on a subnet from our own pool.

The subnet comes from the host's :class:`~orchestrator.state.subnets.SubnetPool`
(Redis); this module creates and removes the network itself through the Engine.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import LockError

from orchestrator.core.types import Network, NetworkSpec
from orchestrator.engine.base import Engine
from orchestrator.errors import (
    ContainerConflict,
    DockerError,
    DockerUnavailable,
    NetworkNotFound,
)
from orchestrator.protocol import Kind, label, label_filter
from orchestrator.settings import Settings
from orchestrator.state import keys, sessions
from orchestrator.state.subnets import SubnetPool

if TYPE_CHECKING:
    from orchestrator.worker.runtime import Runtime

__all__ = [
    "network_name",
    "ensure_network",
    "remove_network",
    "join_session_network",
]

log = logging.getLogger(__name__)


def network_name(session_id: str) -> str:
    """The session network's name: ``session_<session_id>``."""
    return f"session_{session_id}"


def ensure_network(
    engine: Engine,
    redis: Any,
    settings: Settings,
    session_id: str,
    attempts: int = 8,
) -> Network:
    """The session's network on this host, created (with a pool subnet) if missing.

    Creation is serialized per host and session with a Redis lock, because the
    engine does not refuse two networks of the same name.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the subnet pool and the lock).
        settings: the worker's settings.
        session_id: the session.
        attempts: how many subnets to try when the engine refuses one as overlapping.

    Returns:
        The network (callers use its ``name``).

    Raises:
        NetworkPoolExhausted: no subnet is free.
        DockerError: the engine refused every subnet tried, or refused for another reason.
    """
    name = network_name(session_id)
    existing = engine.find_network(name)
    if existing is not None:
        return existing
    pool = SubnetPool.for_settings(redis, settings)
    lock = redis.lock(keys.lock(f"network:{settings.host_name}:{session_id}"), timeout=60)
    lock.acquire()
    try:
        existing = engine.find_network(name)
        if existing is not None:
            return existing
        try:
            return _create(engine, pool, settings, session_id, attempts)
        except BaseException:
            pool.release(session_id)
            raise
    finally:
        _release(lock)


def _release(lock: Any) -> None:
    """Release a lock that may have expired meanwhile (a slow engine under load): the
    network is made by then, and the next caller finds it by name."""
    try:
        lock.release()
    except LockError:
        log.warning("the network lock expired before it was released (slow engine)")


def _create(
    engine: Engine, pool: SubnetPool, settings: Settings, session_id: str, attempts: int
) -> Network:
    """Create the network on the first pool subnet the engine accepts."""
    skip: set[int] = set()
    last_error: DockerError | None = None
    for _ in range(attempts):
        index = pool.allocate(session_id, skip)
        subnet = pool.subnet(index)
        try:
            return engine.create_network(_spec(settings, session_id, subnet))
        except DockerError as exc:
            if isinstance(exc, DockerUnavailable | ContainerConflict):
                raise
            if not _overlaps_a_network(engine, subnet):
                raise
            log.info("subnet %s is used outside our pool; trying another", subnet)
            skip.add(index)
            last_error = exc
    raise DockerError(f"could not create network {network_name(session_id)}: {last_error}")


def _spec(settings: Settings, session_id: str, subnet: ipaddress.IPv4Network) -> NetworkSpec:
    return NetworkSpec(
        name=network_name(session_id),
        labels={
            label("managed"): "true",
            label("kind"): Kind.SESSION_NETWORK.value,
            label("session"): session_id,
            label("host"): settings.host_name,
        },
        internal=not settings.session_egress,
        subnet=str(subnet),
        gateway=str(next(subnet.hosts())),
    )


def _overlaps_a_network(engine: Engine, subnet: ipaddress.IPv4Network) -> bool:
    """True when a network on the engine (ours or not) holds a subnet overlapping ``subnet``.

    The engine refuses such a subnet; any other refusal is not a reason to try another.
    """
    for network in engine.list_networks():
        for cidr in network.subnets:
            try:
                other = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            if other.version == 4 and other.overlaps(subnet):
                return True
    return False


def remove_network(engine: Engine, redis: Any, settings: Settings, session_id: str) -> int:
    """Remove the session's network(s) on this host and release the subnet.

    Args:
        engine: this host's engine.
        redis: a redis-py client (the subnet pool).
        settings: the worker's settings.
        session_id: the session.

    Returns:
        How many networks were removed.

    Raises:
        NetworkInUse: containers are still attached to the network.
        DockerError: the engine refused otherwise.
    """
    removed = 0
    for network in engine.list_networks(label_filter(session=session_id)):
        try:
            engine.remove_network(network.id)
        except NetworkNotFound:
            continue  # removed by someone else in between
        removed += 1
    SubnetPool.for_settings(redis, settings).release(session_id)
    return removed


def join_session_network(rt: Runtime, session_id: str) -> str:
    """The name of the session's network on this host, created if needed.

    The session is claimed for this host (or found to be owned by it) and recorded as
    having containers here first.

    Args:
        rt: this worker's runtime.
        session_id: the session.

    Returns:
        The network's name.

    Raises:
        WrongHost / HostUnavailable: another host owns the session.
        NetworkPoolExhausted / DockerError: see :func:`ensure_network`.
    """
    sessions.require_owner(rt, session_id)
    sessions.record_host(rt, session_id)
    return ensure_network(rt.engine, rt.redis, rt.settings, session_id).name
