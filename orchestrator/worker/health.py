"""Relic health: probing the health endpoint at the container's address, and waiting for it
with a short adaptive poll that fails fast when the container exits."""

from __future__ import annotations

import http.client
import time
from typing import Any

from orchestrator.engine import containers
from orchestrator.engine.translate import docker_errors
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


def container_address(container: Any, network: str | None) -> str | None:
    nets = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    chosen = nets.get(network) if network else next(iter(nets.values()), None)
    return (chosen or {}).get("IPAddress") or None


def logs_tail(container: Any) -> str:
    try:
        with docker_errors("read relic logs"):
            raw = container.logs(tail=LOG_TAIL_LINES)
        return bytes(raw).decode("utf-8", errors="replace").strip()
    except OrchestratorError:
        return ""


def wait_healthy(container: Any, network: str | None, request: RelicStartRequest) -> str:
    """Poll the health endpoint with a short adaptive interval until it answers.

    Returns:
        The container's address.

    Raises:
        RelicExited: the container stopped during the wait (its log tail is in the message).
        RelicUnhealthy: no healthy answer within ``health_timeout_seconds``.
    """
    deadline = time.monotonic() + request.health_timeout_seconds
    interval = 0.005
    address: str | None = None
    while True:
        with docker_errors(f"inspect relic {container.name}"):
            container.reload()
        state = containers.state(container)
        if state.get("Status") in ("exited", "dead"):
            raise RelicExited(
                f"relic {request.relic_name!r} exited with code {state.get('ExitCode')} before "
                f"it was healthy; last log lines:\n{logs_tail(container)}"
            )
        address = address or container_address(container, network)
        if address and probe(address, request.port, request.health_check_endpoint, 0.5):
            return address
        if time.monotonic() >= deadline:
            raise RelicUnhealthy(
                f"relic {request.relic_name!r} did not answer GET "
                f"{request.health_check_endpoint} on port {request.port} within "
                f"{request.health_timeout_seconds} s; last log lines:\n{logs_tail(container)}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)
