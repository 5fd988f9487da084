"""Waiting for a container to end, killing it, and reading what it wrote, on the Engine.

The engine's own wait is bounded (:meth:`~orchestrator.engine.base.Engine.wait_container`
returns None when its time is up), so a wait runs in short slices and the cancellation
flag is checked between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.core.output import CappedBuffer, capture
from orchestrator.engine.base import Engine
from orchestrator.errors import ContainerNotFound, DockerError, DockerUnavailable

__all__ = ["Exit", "wait_for_exit", "kill", "collect_logs"]


@dataclass(frozen=True)
class Exit:
    """How a wait ended: the exit code, or why we stopped waiting."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False


def wait_for_exit(
    engine: Engine,
    ref: str,
    *,
    deadline: float,
    slice_seconds: float,
    should_cancel: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> Exit:
    """Wait until the container exits, the deadline passes or cancellation is asked.

    Args:
        engine: the engine running the container.
        ref: the container's id or name.
        deadline: when to give up, on ``clock``'s scale.
        slice_seconds: the longest single wait; cancellation is checked between slices.
        should_cancel: asked before every slice; True ends the wait at once.
        clock: the monotonic clock ``deadline`` is measured on.

    Returns:
        The exit code; or ``Exit(None, timed_out=True)`` / ``Exit(None, cancelled=True)``;
        or ``Exit(None)`` when the container vanished while it was waited on.

    Raises:
        DockerUnavailable: the engine stopped answering.
    """
    while True:
        if should_cancel():
            return Exit(None, cancelled=True)
        remaining = deadline - clock()
        if remaining <= 0:
            return Exit(None, timed_out=True)
        try:
            code = engine.wait_container(ref, min(slice_seconds, remaining))
        except ContainerNotFound:
            return Exit(None)
        if code is not None:
            return Exit(code)


def kill(engine: Engine, ref: str) -> None:
    """SIGKILL a container, ignoring one that already stopped, vanished or cannot be killed.

    Raises:
        DockerUnavailable: the engine stopped answering.
    """
    try:
        engine.kill_container(ref)
    except DockerUnavailable:
        raise
    except (DockerError, ContainerNotFound):
        pass  # the caller removes it anyway; a refused kill must not hide the result


def collect_logs(engine: Engine, ref: str, cap_bytes: int) -> tuple[CappedBuffer, CappedBuffer]:
    """stdout and stderr of a stopped container, each capped (head and tail kept).

    Raises:
        ContainerNotFound: no such container.
    """
    return _capture(engine, ref, True, cap_bytes), _capture(engine, ref, False, cap_bytes)


def _capture(engine: Engine, ref: str, stdout: bool, cap_bytes: int) -> CappedBuffer:
    stream = engine.container_logs(ref, stdout=stdout, stderr=not stdout)
    try:
        return capture(stream, cap_bytes)
    finally:
        stream.close()
