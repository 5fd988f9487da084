"""Let a worker that runs in a container reach the relics it probes.

A relic is probed at its address in the session network. A worker running on the Docker
host reaches that address through the host's bridge; a worker running in a container (the
docker-compose deployment) sits in a network of its own, which the engine isolates from
every other bridge. Such a worker joins the session network for the time of a probe and
leaves it afterwards, and cleanup disconnects any worker still attached (one that died
mid-probe), because the engine refuses to remove a network that has endpoints.

Outside a container every function here is a no-op, with no engine call. The container is
found from ``ORCHESTRATOR_WORKER_CONTAINER`` (an id or name) or else from the container id
in ``/proc/self/mountinfo`` (Docker mounts ``.../containers/<id>/hostname``) or
``/proc/self/cgroup``; a candidate counts only if the engine the worker talks to knows it
(a worker in a container may drive another host's engine, which it cannot join).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping

from orchestrator.engine.base import Engine
from orchestrator.errors import DockerError, NetworkNotFound
from orchestrator.protocol import label

__all__ = ["ENV_CONTAINER", "own_container_id", "join", "leave", "attached", "reset"]

log = logging.getLogger(__name__)
ENV_CONTAINER = "ORCHESTRATOR_WORKER_CONTAINER"
_SOURCES = (
    ("/proc/self/mountinfo", re.compile(r"[/-]containers/([0-9a-f]{64})/")),
    ("/proc/self/cgroup", re.compile(r"(?:docker|libpod)[-/]([0-9a-f]{64})")),
)

_lock = threading.Lock()
_own: list[str | None] = []  # this process's verified container id, once resolved
_users: dict[str, int] = {}  # network name -> probes in this process that need it
_network_locks: dict[str, threading.Lock] = {}


def own_container_id(environ: Mapping[str, str] | None = None) -> str | None:
    """This process's container id (or name), if it appears to run in a container.

    Args:
        environ: the environment to read; ``os.environ`` when omitted.

    Returns:
        A candidate id or name, not yet checked against the engine; None on a plain host.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_CONTAINER, "").strip()
    if explicit:
        return explicit
    for path, pattern in _SOURCES:
        try:
            with open(path) as source:
                found = pattern.search(source.read())
        except OSError:
            continue
        if found:
            return found.group(1)
    return None


def _self(engine: Engine) -> str | None:
    """The engine's id of this process's container, resolved once per process."""
    with _lock:
        if _own:
            return _own[0]
    candidate = own_container_id()
    resolved: str | None = None
    if candidate is not None:  # on a plain host the engine is never asked
        found = engine.find_container(candidate)
        # None: a container, but not on this engine: nothing to join
        resolved = found.id if found is not None else None
    with _lock:
        if not _own:
            _own.append(resolved)
            log.info("worker container on this engine: %s", resolved or "none")
        return _own[0]


def reset() -> None:
    """Forget the resolved container and the attachments counted (for tests)."""
    with _lock:
        _own.clear()
        _users.clear()
        _network_locks.clear()


def join(engine: Engine, network_name: str) -> bool:
    """Connect this worker's container to ``network_name`` (idempotent).

    Args:
        engine: this host's engine.
        network_name: the network to join.

    Returns:
        True when the container is now attached; False outside a container.

    Raises:
        NetworkNotFound: the network does not exist.
        DockerError / DockerUnavailable: the engine refused or is unreachable.
    """
    own = _self(engine)
    if own is None:
        return False
    engine.connect_network(network_name, own)  # already attached: nothing happens
    return True


def leave(engine: Engine, network_name: str) -> int:
    """Disconnect this worker's container, and any other unmanaged container (a worker
    that joined and died), from ``network_name`` so the network can be removed.

    Containers labelled ``orchestrator.managed=true`` (relics, tools) are left alone:
    they are removed by the cleanup steps before this one.

    Args:
        engine: this host's engine.
        network_name: the network to empty of workers.

    Returns:
        How many containers were disconnected (0 outside a container or when the
        network is already gone).
    """
    own = _self(engine)
    network = engine.find_network(network_name)
    if network is None:
        return 0
    disconnected = 0
    for container_id in network.containers:
        if container_id != own and _managed(engine, container_id):
            continue
        try:
            engine.disconnect_network(network_name, container_id)
        except NetworkNotFound:
            return disconnected  # removed in between: nothing left to disconnect
        disconnected += 1
    return disconnected


def _managed(engine: Engine, container_id: str) -> bool:
    found = engine.find_container(container_id)
    if found is None:
        return True  # gone already: nothing to disconnect
    return found.labels.get(label("managed")) == "true"


def _network_lock(network_name: str) -> threading.Lock:
    with _lock:
        return _network_locks.setdefault(network_name, threading.Lock())


@contextlib.contextmanager
def attached(engine: Engine, network_name: str) -> Iterator[bool]:
    """Keep this worker's container attached to ``network_name`` for the ``with`` block.

    Concurrent blocks on the same network share one attachment: the first joins, the
    last leaves. Outside a container this does nothing.

    Args:
        engine: this host's engine.
        network_name: the network to be in.

    Yields:
        True when the worker is in a container and attached.
    """
    if _self(engine) is None:
        yield False
        return
    lock = _network_lock(network_name)
    with lock:
        if _users.get(network_name, 0) == 0:
            join(engine, network_name)
        _users[network_name] = _users.get(network_name, 0) + 1
    try:
        yield True
    finally:
        with lock:
            _users[network_name] -= 1
            if _users[network_name] == 0:
                del _users[network_name]
                _disconnect_self(engine, network_name)


def _disconnect_self(engine: Engine, network_name: str) -> None:
    own = _self(engine)
    if own is None:
        return
    try:
        engine.disconnect_network(network_name, own)
    except DockerError as exc:
        # The engine refused or is unreachable: cleanup's leave() covers the rest.
        log.debug("leaving %s: %s", network_name, exc)
    except NetworkNotFound:
        log.debug("leaving %s: the network is gone", network_name)
