"""Relic health: probing the health endpoint at the container's address, and waiting for it
with a short adaptive poll that fails fast when the container exits."""

from __future__ import annotations

import http.client
import time

from orchestrator.core.types import Container
from orchestrator.engine.base import Engine
from orchestrator.errors import OrchestratorError, RelicExited, RelicUnhealthy
from orchestrator.models import RelicStartRequest

__all__ = ["probe", "wait_healthy", "container_address", "logs_tail", "LOG_TAIL_LINES"]

LOG_TAIL_LINES = 20


def probe(address: str, port: int, path: str, timeout_seconds: float = 1.0) -> bool:
    """True when ``GET http://address:port/path`` answers with a status below 400."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout_seconds)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        return connection.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def container_address(container: Container, network: str | None) -> str | None:
    """The container's IPv4 address in ``network`` (its first network when None).

    Returns:
        The address, or None when it has none there (yet).
    """
    if network:
        return container.networks.get(network) or None
    return next(iter(container.networks.values()), "") or None


def logs_tail(engine: Engine, ref: str) -> str:
    """The last :data:`LOG_TAIL_LINES` lines of the container's output ("" if unreadable)."""
    try:
        stream = engine.container_logs(ref, tail=LOG_TAIL_LINES)
        try:
            raw = b"".join(stream)
        finally:
            stream.close()
    except OrchestratorError:
        return ""
    return raw.decode("utf-8", errors="replace").strip()


def wait_healthy(
    engine: Engine, container: Container, network: str | None, request: RelicStartRequest
) -> str:
    """Poll the health endpoint with a short adaptive interval until it answers.

    A relic without a health endpoint (a workspace) is ready as soon as its container runs.

    Args:
        engine: this host's engine.
        container: the started relic container.
        network: the network whose address is probed (the first one when None).
        request: the relic's request (port, endpoint, timeout).

    Returns:
        The container's address.

    Raises:
        RelicExited: the container stopped during the wait (its log tail is in the message).
        RelicUnhealthy: no healthy answer within ``health_timeout_seconds``.
        ContainerNotFound: the container was removed during the wait.
    """
    deadline = time.monotonic() + request.health_timeout_seconds
    interval = 0.005
    address: str | None = None
    while True:
        current = engine.inspect_container(container.id)
        if current.finished:
            raise RelicExited(
                f"relic {request.relic_name!r} exited with code {current.exit_code} before "
                f"it was healthy; last log lines:\n{logs_tail(engine, container.id)}"
            )
        address = address or container_address(current, network)
        endpoint = request.health_check_endpoint
        if endpoint is None and current.status == "running":
            return address or ""
        if address and endpoint and probe(address, request.port, endpoint, 0.5):
            return address
        if time.monotonic() >= deadline:
            raise RelicUnhealthy(
                f"relic {request.relic_name!r} did not answer GET "
                f"{request.health_check_endpoint} on port {request.port} within "
                f"{request.health_timeout_seconds} s; last log lines:\n"
                f"{logs_tail(engine, container.id)}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)
