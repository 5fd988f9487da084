"""Container I/O: find, create, wait in slices, kill, collect output, remove.

Every docker-py call goes through :func:`orchestrator.engine.docker_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests.exceptions

from orchestrator.core.output import CappedBuffer, capture
from orchestrator.engine.translate import docker_errors
from orchestrator.errors import ContainerNotFound, DockerError, DockerUnavailable

__all__ = [
    "Exit",
    "find",
    "create",
    "wait_for_exit",
    "kill",
    "remove",
    "collect_logs",
    "state",
]


@dataclass(frozen=True)
class Exit:
    """How a wait ended: the exit code, or why we stopped waiting."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False


def find(docker_client: Any, name_or_id: str) -> Any | None:
    """The container with this name or id, or None."""
    try:
        with docker_errors(f"inspect container {name_or_id}"):
            return docker_client.containers.get(name_or_id)
    except ContainerNotFound:
        return None


def create(docker_client: Any, config: dict[str, Any]) -> Any:
    """Create (not start) a container from ``containers.create`` keyword arguments.

    Raises:
        ContainerConflict: a container of that name exists already.
    """
    with docker_errors(f"create container {config.get('name')}"):
        return docker_client.containers.create(**config)


def state(container: Any) -> dict[str, Any]:
    """The container's ``State`` block from the last inspect."""
    return dict(container.attrs.get("State") or {})


def wait_for_exit(
    container: Any,
    *,
    deadline: float,
    slice_seconds: float,
    should_cancel: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> Exit:
    """Wait until the container exits, the deadline passes or cancellation is asked.

    docker-py's ``wait(timeout=)`` is only an HTTP read timeout, so the wait runs
    in short slices; between slices the cancellation flag is checked.
    """
    while True:
        if should_cancel():
            return Exit(None, cancelled=True)
        remaining = deadline - clock()
        if remaining <= 0:
            return Exit(None, timed_out=True)
        try:
            with docker_errors(f"wait for container {container.name}"):
                try:
                    outcome = container.wait(timeout=min(slice_seconds, remaining))
                except (
                    requests.exceptions.ReadTimeout,
                    requests.exceptions.ConnectionError,
                ) as exc:
                    if _is_read_timeout(exc):
                        continue
                    raise
        except ContainerNotFound:
            return Exit(None)
        return Exit(int(outcome.get("StatusCode", -1)))


def _is_read_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    return "timed out" in str(exc).lower() or "read timeout" in str(exc).lower()


def kill(container: Any) -> None:
    """Kill a container, ignoring one that already stopped or vanished."""
    try:
        with docker_errors(f"kill container {container.name}"):
            container.kill()
    except DockerUnavailable:
        raise
    except DockerError:
        pass  # it exited or vanished in between (404 or 409)


def remove(docker_client: Any, name_or_id: str) -> bool:
    """Force-remove a container; True if one was removed."""
    try:
        with docker_errors(f"remove container {name_or_id}"):
            docker_client.api.remove_container(name_or_id, force=True, v=True)
        return True
    except ContainerNotFound:
        return False


def collect_logs(container: Any, cap_bytes: int) -> tuple[CappedBuffer, CappedBuffer]:
    """stdout and stderr of a stopped container, each capped (head and tail kept)."""
    with docker_errors(f"read logs of {container.name}"):
        stdout = capture(container.logs(stdout=True, stderr=False, stream=True), cap_bytes)
        stderr = capture(container.logs(stdout=False, stderr=True, stream=True), cap_bytes)
    return stdout, stderr
