"""``orchestrator tool run|show|logs|cancel``: tool executions and their progress."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from orchestrator.cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    CliError,
    _no_worker,
)
from orchestrator.cli.output import _fields, _print_json
from orchestrator.cli.request import _tool_request
from orchestrator.client.sync import FINAL_CELERY_STATES, ExecutionHandle, OrchestratorClient
from orchestrator.models import ToolExecutionResult

POLL_SECONDS = 0.2
RUN_WAIT_SLACK_SECONDS = 120  # image pull or build before the tool's own timeout starts
FOLLOW_BLOCK_MS = 1000


class _Progress:
    """State changes of a waiting run: a spinner line on a TTY, plain lines otherwise."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.states: list[str] = []
        self.started = time.monotonic()
        self.ticks = 0

    def update(self, state: str) -> None:
        """Record the current state and redraw (or print it once when it changed)."""
        if not self.enabled:
            return
        changed = not self.states or self.states[-1] != state
        if changed:
            self.states.append(state)
        elapsed = time.monotonic() - self.started
        if self.tty:
            frame = self.FRAMES[self.ticks % len(self.FRAMES)]
            self.ticks += 1
            self.stream.write(f"\r\x1b[K{frame} {' -> '.join(self.states)}  {elapsed:.1f}s")
            self.stream.flush()
        elif changed:
            print(f"{state} ({elapsed:.1f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        """Erase the spinner line."""
        if self.tty and self.states:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _still_running(execution_id: str, state: str, seconds: float) -> str:
    if state == "PENDING":
        return _no_worker(seconds)
    return (
        f"execution {execution_id} is still {state} after {seconds:g} s and keeps running: "
        f"watch it with `orchestrator tool logs --follow {execution_id}`, "
        f"cancel it with `orchestrator tool cancel {execution_id}`, or raise --wait"
    )


def _wait_for(
    handle: ExecutionHandle, wait_seconds: float, progress: _Progress
) -> ToolExecutionResult:
    """Poll the run's state (shown by ``progress``) until it is final, then fetch the result."""
    deadline = time.monotonic() + wait_seconds
    try:
        state = handle.state
        while state not in FINAL_CELERY_STATES:
            progress.update(state)
            if time.monotonic() >= deadline:
                raise CliError(_still_running(handle.id, state, wait_seconds), EXIT_TEMPFAIL)
            time.sleep(POLL_SECONDS)
            state = handle.state
    finally:
        progress.close()
    return handle.result(timeout=max(wait_seconds, 10))


def _print_result(result: ToolExecutionResult, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    duration = result.duration_seconds
    _fields(
        [
            ("execution", result.execution_id),
            ("tool", f"{result.tool_name} (session {result.session_id})"),
            ("status", result.status),
            ("exit code", result.exit_code),
            ("duration", None if duration is None else f"{duration:.2f} s"),
            ("host", result.host),
        ]
    )
    if result.result is not None:
        print("result:")
        print(json.dumps(result.result, indent=2, ensure_ascii=False))
    for name, text, cut in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if text:
            print(f"--- {name}{' (truncated: head and tail kept)' if cut else ''} ---")
            print(text, end="" if text.endswith("\n") else "\n")
    _fields([("error", result.error)])


def _cmd_tool_run(client: OrchestratorClient, args: argparse.Namespace) -> int:
    request = _tool_request(args)
    handle = client.execute_tool(request)
    if args.detach:
        if args.json:
            _print_json({"execution_id": handle.id})
        else:
            print(handle.id)
        return EXIT_OK
    wait = args.wait_timeout
    if wait is None:
        wait = request.resource_limits.timeout_seconds + RUN_WAIT_SLACK_SECONDS
    try:
        result = _wait_for(handle, wait, _Progress(sys.stderr, enabled=not args.quiet))
    except KeyboardInterrupt:
        print(
            f"\nexecution {handle.id} keeps running; "
            f"cancel it with `orchestrator tool cancel {handle.id}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _print_result(result, args.json)
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILED


def _is_unknown(current: ToolExecutionResult | dict[str, Any]) -> bool:
    """PENDING with nothing else known: Celery's answer for an id it never saw."""
    return (
        isinstance(current, dict)
        and current.get("state") == "PENDING"
        and set(current) <= {"execution_id", "state"}
    )


def _unknown(execution_id: str) -> CliError:
    return CliError(
        f"unknown execution id {execution_id!r}: check the id (results expire after "
        "ORCHESTRATOR_RESULT_TTL_SECONDS); a run that no worker has picked up yet looks the "
        "same: is a worker running? run `orchestrator doctor`"
    )


def _cmd_tool_show(client: OrchestratorClient, args: argparse.Namespace) -> int:
    current = client.get_execution(args.execution_id)
    if isinstance(current, ToolExecutionResult):
        _print_result(current, args.json)
        return EXIT_OK
    if _is_unknown(current):
        raise _unknown(args.execution_id)
    if args.json:
        _print_json(dict(current))
    else:
        _fields(sorted(current.items(), key=lambda kv: kv[0] != "execution_id"))
    return EXIT_OK


def _emit_logs(execution_id: str, logs: dict[str, str], as_json: bool) -> None:
    if as_json:
        _print_json({"execution_id": execution_id, **logs})
        return
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        stream.write(logs.get(name, ""))
        stream.flush()


def _emit_chunk(stream: str, text: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"stream": stream, "text": text}), flush=True)
        return
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(text)
    out.flush()


def _final_logs(client: OrchestratorClient, execution_id: str, timeout: float) -> dict[str, str]:
    """Logs from the result; the result is stored just after the live stream ends."""
    deadline = time.monotonic() + timeout
    while not isinstance(client.get_execution(execution_id), ToolExecutionResult):
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return client.get_logs(execution_id)


def _follow_logs(client: OrchestratorClient, args: argparse.Namespace) -> int:
    execution_id = args.execution_id
    finished = isinstance(client.get_execution(execution_id), ToolExecutionResult)
    streamed = False
    # A finished run whose live stream expired would otherwise wait forever for the end marker.
    if not finished or client.has_live_logs(execution_id):
        for stream, text in client.follow_logs(execution_id, block_ms=FOLLOW_BLOCK_MS):
            _emit_chunk(stream, text, args.json)
            streamed = True
    if not streamed:
        _emit_logs(execution_id, _final_logs(client, execution_id, args.call_timeout), args.json)
    return EXIT_OK


def _cmd_tool_logs(client: OrchestratorClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow_logs(client, args)
    logs = client.get_logs(args.execution_id)
    if not any(logs.values()):
        # get_logs only knows finished runs; a running one has published live output.
        live = client.live_logs(args.execution_id)
        if any(live.values()):
            logs = live
        elif _is_unknown(client.get_execution(args.execution_id)):
            raise _unknown(args.execution_id)
    _emit_logs(args.execution_id, logs, args.json)
    return EXIT_OK


def _cmd_tool_cancel(client: OrchestratorClient, args: argparse.Namespace) -> int:
    reply = client.cancel_tool(args.execution_id, timeout=args.call_timeout)
    if args.json:
        _print_json(reply)
    elif reply.get("cancelled"):
        print(f"cancel requested for {args.execution_id}: {reply.get('status')}")
    else:
        print(f"{args.execution_id} had already finished: {reply.get('status')}")
    return EXIT_OK
