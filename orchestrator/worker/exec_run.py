"""Running a tool inside an already-running (warm pool) container with ``exec``.

Output is demultiplexed live into the same capped buffers and live log as a cold
run; the deadline and cancellation are enforced by the caller's wait, which kills
the whole container (it is discarded after one run anyway).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.output import CappedBuffer
from orchestrator.engine import containers
from orchestrator.engine.translate import docker_errors
from orchestrator.state.logs import LiveLog

__all__ = ["ExecOutcome", "run_exec", "exec_command"]


@dataclass
class ExecOutcome:
    """What an exec run produced."""

    exit_code: int | None
    stdout: CappedBuffer
    stderr: CappedBuffer
    timed_out: bool = False
    cancelled: bool = False
    errors: list[BaseException] = field(default_factory=list)


def exec_command(command: list[str] | str | None, image_config: dict[str, Any]) -> list[str]:
    """The argv to exec: the request's command, else the image's entrypoint and cmd."""
    if isinstance(command, str):
        return shlex.split(command)
    if command:
        return list(command)
    return list(image_config.get("Entrypoint") or []) + list(image_config.get("Cmd") or [])


def run_exec(
    docker_client: Any,
    container: Any,
    argv: list[str],
    environment: dict[str, str],
    *,
    cap_bytes: int,
    live: LiveLog | None,
    deadline: float,
    slice_seconds: float,
    should_cancel: Callable[[], bool],
    on_started: Callable[[], None] = lambda: None,
) -> ExecOutcome:
    """Exec ``argv`` in ``container`` and wait until it ends, the deadline or cancellation.

    ``on_started`` is called once the process was started in the container.
    """
    api = docker_client.api
    outcome = ExecOutcome(None, CappedBuffer(cap_bytes), CappedBuffer(cap_bytes))
    with docker_errors(f"exec in {container.name}"):
        exec_id = api.exec_create(
            container.id, argv, stdout=True, stderr=True, environment=environment
        )["Id"]
        stream = api.exec_start(exec_id, stream=True, demux=True)
    on_started()
    reader = threading.Thread(target=_pump, args=(stream, outcome, live), daemon=True)
    reader.start()
    while reader.is_alive():
        if should_cancel():
            outcome.cancelled = True
        elif time.monotonic() >= deadline:
            outcome.timed_out = True
        if outcome.cancelled or outcome.timed_out:
            containers.kill(container)
            reader.join(5)
            break
        reader.join(min(slice_seconds, max(0.0, deadline - time.monotonic())))
    if live is not None:
        live.close()
    with docker_errors(f"inspect exec in {container.name}"):
        code = api.exec_inspect(exec_id).get("ExitCode")
    outcome.exit_code = None if code is None else int(code)
    return outcome


def _pump(stream: Any, outcome: ExecOutcome, live: LiveLog | None) -> None:
    try:
        for out, err in stream:
            if out:
                outcome.stdout.write(out)
                if live is not None:
                    live.append("stdout", out)
            if err:
                outcome.stderr.write(err)
                if live is not None:
                    live.append("stderr", err)
    except Exception as exc:  # noqa: BLE001 - reported through the outcome
        outcome.errors.append(exc)
