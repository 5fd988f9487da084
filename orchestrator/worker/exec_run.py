"""Running a command inside an already-running container: a tool in a warm-pool
container (given to its agent, :mod:`orchestrator.core.agent`), or a command in a relic
(with ``exec``).

Output is demultiplexed live into the same capped buffers and live log as a cold
run; the deadline and cancellation are enforced by the wait loop, which calls the
caller's ``stop``: a pool run kills the whole container (it is discarded after one run
anyway), an exec in a relic kills only the command's processes.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.core.output import CappedBuffer, extract_result
from orchestrator.core.types import ExecSpec, ExecStream, Image
from orchestrator.engine.base import Engine
from orchestrator.state.logs import LiveLog
from orchestrator.worker import waiting

__all__ = ["ExecOutcome", "run_exec", "exec_command", "outcome_fields"]

#: The stream names of the exec output's stream numbers.
_STREAMS = {1: "stdout", 2: "stderr"}


@dataclass
class ExecOutcome:
    """What an exec run produced."""

    exit_code: int | None
    stdout: CappedBuffer
    stderr: CappedBuffer
    timed_out: bool = False
    cancelled: bool = False
    errors: list[BaseException] = field(default_factory=list)


def outcome_fields(outcome: ExecOutcome, started: datetime, finished: datetime) -> dict[str, Any]:
    """The result fields of an exec's outcome (a pool run's, an exec in a relic's): exit code,
    JSON result, capped stdout and stderr, and the times."""
    stdout = outcome.stdout.text()
    return {
        "exit_code": outcome.exit_code,
        "result": extract_result(stdout),
        "stdout": stdout,
        "stderr": outcome.stderr.text(),
        "stdout_truncated": outcome.stdout.truncated,
        "stderr_truncated": outcome.stderr.truncated,
        "started_at": started,
        "finished_at": finished,
        "duration_seconds": round((finished - started).total_seconds(), 3),
    }


def exec_command(command: list[str] | str | None, image: Image | None) -> list[str]:
    """The argv to exec: the request's command, else the image's entrypoint and cmd.

    Args:
        command: the request's command (a string is split as a shell would).
        image: the inspected image; only read when there is no command.

    Returns:
        The argv.
    """
    if isinstance(command, str):
        return shlex.split(command)
    if command:
        return list(command)
    if image is None:
        return []
    return [*image.entrypoint, *image.cmd]


def run_exec(
    engine: Engine,
    container_id: str,
    argv: list[str],
    environment: Mapping[str, str],
    *,
    cap_bytes: int,
    live: LiveLog | None,
    deadline: float,
    slice_seconds: float,
    should_cancel: Callable[[], bool],
    on_started: Callable[[], None] = lambda: None,
    stdin: bytes | None = None,
    working_dir: str | None = None,
    stop: Callable[[], None] | None = None,
    attached: bool = False,
) -> ExecOutcome:
    """Exec ``argv`` in a running container and wait until it ends, the deadline or cancellation.

    At the deadline or on cancellation ``stop`` is called, which must end the exec; by
    default the whole container is killed.

    Args:
        engine: the engine running the container.
        container_id: the running container.
        argv: the command to run.
        environment: its environment.
        cap_bytes: bytes of each stream kept (head and tail).
        live: where output chunks are published while they arrive, if anywhere.
        deadline: when to kill it, on ``time.monotonic``'s scale.
        slice_seconds: how often cancellation is checked.
        should_cancel: asked every slice; True kills it.
        on_started: called once the process was started in the container.
        stdin: bytes given to the command's standard input (None: no stdin).
        working_dir: where the command runs (None: the image's working directory).
        stop: ends the command at the deadline or on cancellation (default: kill the
            container).
        attached: the container is a warm-pool agent: give it the command on its standard
            input (:meth:`Engine.run_attached`) instead of ``exec``.

    Returns:
        Its output, exit code and whether it was stopped.

    Raises:
        ContainerNotFound: no such container (nothing was started).
        DockerError: the container is not running (nothing was started), or its exit code
            could not be read.
    """
    outcome = ExecOutcome(None, CappedBuffer(cap_bytes), CappedBuffer(cap_bytes))
    spec = ExecSpec(argv=tuple(argv), environment=environment, working_dir=working_dir, stdin=stdin)
    start = engine.run_attached if attached else engine.exec_start
    stream = start(container_id, spec)
    try:
        on_started()
        reader = threading.Thread(target=_pump, args=(stream, outcome, live), daemon=True)
        reader.start()
        while True:
            # Wait first: a short command ends without a single cancellation round trip.
            reader.join(min(slice_seconds, max(0.0, deadline - time.monotonic())))
            if not reader.is_alive():
                break
            if should_cancel():
                outcome.cancelled = True
            elif time.monotonic() >= deadline:
                outcome.timed_out = True
            if outcome.cancelled or outcome.timed_out:
                if stop is None:
                    waiting.kill(engine, container_id)
                else:
                    stop()
                reader.join(5)
                break
        if live is not None:
            live.close()
        outcome.exit_code = stream.exit_code()
    finally:
        stream.close()
    return outcome


def _pump(stream: ExecStream, outcome: ExecOutcome, live: LiveLog | None) -> None:
    try:
        for number, data in stream:
            name = _STREAMS.get(number)
            if name is None or not data:
                continue
            (outcome.stdout if number == 1 else outcome.stderr).write(data)
            if live is not None:
                live.append(name, data)
    except Exception as exc:  # noqa: BLE001 - reported through the outcome
        outcome.errors.append(exc)
