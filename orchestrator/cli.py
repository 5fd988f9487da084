"""The ``orchestrator`` command: tool runs, relics, stats, cleanup and sessions.

Each subcommand is one small function ``_cmd_<group>_<verb>(client, args) -> int`` over
:class:`~orchestrator.client.OrchestratorClient`. Output is for humans by default and
JSON with ``--json``. Exit codes: 0 success, 1 a tool run (or cleanup) that did not
succeed, 2 an error the user can fix, printed to stderr as ``error: ...`` with the fix.

::

    orchestrator tool run --image busybox --session s1 --param N=3 -- sh -c 'echo "$N"'
    orchestrator tool logs --follow EXECUTION_ID
    orchestrator relic ls --session s1
    orchestrator stats --watch
    source <(orchestrator completion bash)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import redis.exceptions
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from orchestrator import keys
from orchestrator.client import FINAL_CELERY_STATES, ExecutionHandle, OrchestratorClient
from orchestrator.errors import InvalidRequest, OrchestratorError, OrchestratorTimeout
from orchestrator.logs import follow_live, read_live
from orchestrator.models import (
    AggregateStats,
    ContainerStats,
    RelicInfo,
    RelicStartRequest,
    ToolExecutionRequest,
    ToolExecutionResult,
    parse_request,
)
from orchestrator.registry import HostRegistry
from orchestrator.settings import Settings

__all__ = ["main", "build_parser", "bash_completion", "CliError"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
POLL_SECONDS = 0.2
RUN_WAIT_SLACK_SECONDS = 120  # image pull or build before the tool's own timeout starts
FOLLOW_BLOCK_MS = 1000
CLEAR_SCREEN = "\x1b[H\x1b[2J"
# A CLI should fail in seconds, not retry a dead result backend for ~20 s (Celery's default).
FAIL_FAST_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
START_WORKER = "start one with `celery -A worker worker` (see README)"
START_WORKER_HINT = f"{START_WORKER} or run `orchestrator doctor`"

Handler = Callable[[OrchestratorClient, argparse.Namespace], int]


class CliError(Exception):
    """Raised for a problem the user can fix; the message says how."""


# -- client and settings -----------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"broker_url": args.broker, "result_backend": args.backend}
    return Settings.from_env(**{k: v for k, v in overrides.items() if v})


def _make_client(settings: Settings) -> OrchestratorClient:
    """Build the client every command uses (tests replace this factory)."""
    client = OrchestratorClient(settings)
    options = dict(client.app.conf.result_backend_transport_options or {})
    options["retry_policy"] = FAIL_FAST_RETRY
    client.app.conf.result_backend_transport_options = options
    return client


# -- small output helpers ----------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``label: value`` lines, aligned, skipping None values."""
    shown = [(label, value) for label, value in pairs if value is not None]
    width = max((len(label) for label, _ in shown), default=0) + 2
    for label, value in shown:
        print(f"{label + ':':<{width}}{value}")


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], right: Iterable[int] = ()) -> str:
    """Render rows as an aligned text table; columns in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right_set = set(right)
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in right_set else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _pairs(items: Sequence[str] | None, flag: str, parse_json: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a dict; values parsed as JSON when asked and possible."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{flag} {item!r}: expected KEY=VALUE")
        result[key] = _json_or_text(value) if parse_json else value
    return result


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _overlay(target: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Set the values that are not None (command-line flags win over a request file)."""
    target.update({k: v for k, v in values.items() if v is not None})
    return target


def _sanitize(url: str) -> str:
    return str(maybe_sanitize_url(url))


# -- tool run ----------------------------------------------------------------------------


def _load_request(source: str | None) -> dict[str, Any]:
    if source is None:
        return {}
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise CliError(f"--request: cannot read {source}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CliError(f"--request: {source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CliError(f"--request: {source} must hold a JSON object (a ToolExecutionRequest)")
    return data


def _default_tool_name(request: dict[str, Any]) -> str:
    image = request.get("image")
    if not isinstance(image, str) or not image:
        return "tool"
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-_.")[:64] or "tool"


def _merge_env(request: dict[str, Any], field: str, values: dict[str, Any]) -> None:
    if values:
        request[field] = {**request.get(field, {}), **values}


def _tool_request(args: argparse.Namespace) -> ToolExecutionRequest:
    """The request built from ``--request`` (if any) overlaid with the flags."""
    request = _load_request(args.request)
    _overlay(request, {"image": args.image, "session_id": args.session})
    _overlay(request, {"tool_name": args.tool_name, "network_mode": args.network})
    request.setdefault("tool_name", _default_tool_name(request))
    if args.command:
        request["command"] = args.command
    if args.no_cleanup:
        request["cleanup"] = False
    _merge_env(request, "parameters", _pairs(args.param, "--param", parse_json=True))
    _merge_env(request, "secret_parameters", _pairs(args.secret, "--secret"))
    _merge_env(request, "environment", _pairs(args.env, "--env"))
    limits = {
        "memory_mb": args.memory_mb,
        "cpu_limit": args.cpu,
        "timeout_seconds": args.timeout_seconds,
        "pids_limit": args.pids,
    }
    request["resource_limits"] = _overlay(dict(request.get("resource_limits", {})), limits)
    if args.dockerfile_inline or args.build_context:
        build = {"dockerfile_inline": args.dockerfile_inline, "context": args.build_context}
        request["build"] = _overlay(dict(request.get("build") or {}), build)
    return parse_request(ToolExecutionRequest, request)


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


def _no_worker(seconds: float) -> str:
    return f"no worker answered within {seconds:g} s: is a worker running? {START_WORKER_HINT}"


def _still_running(execution_id: str, state: str, seconds: float) -> str:
    if state == "PENDING":
        return _no_worker(seconds)
    return (
        f"execution {execution_id} is still {state} after {seconds:g} s and keeps running: "
        f"watch it with `orchestrator tool logs --follow {execution_id}`, "
        f"cancel it with `orchestrator tool cancel {execution_id}`, or raise --wait-timeout"
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
                raise CliError(_still_running(handle.id, state, wait_seconds))
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


# -- tool show / logs / cancel -----------------------------------------------------------


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
    if not finished or client.redis.exists(keys.logs(execution_id)):
        for stream, text in follow_live(client.redis, execution_id, block_ms=FOLLOW_BLOCK_MS):
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
        live = read_live(client.redis, args.execution_id)
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


# -- relics ------------------------------------------------------------------------------


def _publish(items: Sequence[str] | None) -> dict[int, int] | None:
    ports: dict[int, int] = {}
    for item in items or []:
        container, sep, host = item.partition(":")
        if not (sep and container.isdigit() and host.isdigit()):
            raise InvalidRequest(f"--publish {item!r}: expected CONTAINER_PORT:HOST_PORT")
        ports[int(container)] = int(host)
    return ports or None


def _relic_request(args: argparse.Namespace) -> RelicStartRequest:
    request: dict[str, Any] = {"relic_name": args.name, "session_id": args.session}
    _overlay(
        request,
        {
            "image": args.image,
            "command": args.command or None,
            "environment": _pairs(args.env, "--env") or None,
            "port": args.port,
            "ports": _publish(args.publish),
            "health_check_endpoint": args.health,
            "health_timeout_seconds": args.health_timeout,
        },
    )
    limits = _overlay({}, {"memory_mb": args.memory_mb, "cpu_limit": args.cpu})
    if limits:
        # Unset limits keep the relic defaults, not ResourceLimits' tool defaults.
        default = RelicStartRequest.model_fields["resource_limits"].get_default(
            call_default_factory=True
        )
        request["resource_limits"] = {**default.model_dump(), **limits}
    return parse_request(RelicStartRequest, request)


def _print_relic(relic: RelicInfo, as_json: bool) -> None:
    if as_json:
        print(relic.model_dump_json(indent=2))
        return
    _fields(
        [
            ("relic", relic.relic_id),
            ("name", relic.relic_name),
            ("session", relic.session_id),
            ("status", relic.status),
            ("healthy", "yes" if relic.healthy else "no"),
            ("internal url", relic.internal_url),
            ("network", relic.network),
            ("host", relic.host),
            ("container", relic.container_name),
            ("ports", ", ".join(f"{c}->{h}" for c, h in relic.ports.items()) or None),
            ("started", relic.started_at),
        ]
    )


def _cmd_relic_start(client: OrchestratorClient, args: argparse.Namespace) -> int:
    request = _relic_request(args)
    wait = args.wait_timeout
    if wait is None:
        wait = request.health_timeout_seconds + RUN_WAIT_SLACK_SECONDS
    try:
        relic = client.start_relic(request, timeout=wait)
    except OrchestratorTimeout as exc:
        raise CliError(
            f"relic {request.relic_name!r} was not up within {wait:g} s: is a worker running? "
            f"{START_WORKER_HINT}; a slow image pull needs a larger --wait-timeout"
        ) from exc
    _print_relic(relic, args.json)
    return EXIT_OK


def _relic_table(relics: Sequence[RelicInfo]) -> str:
    """The ``relic ls`` table."""
    headers = ["RELIC ID", "NAME", "SESSION", "STATUS", "HEALTHY", "HOST", "INTERNAL URL"]
    rows = [
        [
            r.relic_id,
            r.relic_name,
            r.session_id,
            r.status,
            "yes" if r.healthy else "no",
            r.host,
            r.internal_url,
        ]
        for r in relics
    ]
    return _table(rows, headers)


def _cmd_relic_ls(client: OrchestratorClient, args: argparse.Namespace) -> int:
    relics = client.list_relics(args.session, timeout=args.call_timeout)
    if args.json:
        _print_json([r.model_dump(mode="json") for r in relics])
    else:
        print(_relic_table(relics))
    return EXIT_OK


def _cmd_relic_show(client: OrchestratorClient, args: argparse.Namespace) -> int:
    _print_relic(client.get_relic(args.relic_id, timeout=args.call_timeout), args.json)
    return EXIT_OK


def _cmd_relic_stop(client: OrchestratorClient, args: argparse.Namespace) -> int:
    _print_relic(client.stop_relic(args.relic_id, timeout=max(args.call_timeout, 120)), args.json)
    return EXIT_OK


def _cmd_relic_rm(client: OrchestratorClient, args: argparse.Namespace) -> int:
    reply = client.remove_relic(args.relic_id, timeout=max(args.call_timeout, 120))
    if args.json:
        _print_json(reply)
    else:
        print(f"{'removed' if reply.get('removed') else 'nothing to remove for'} {args.relic_id}")
    return EXIT_OK


# -- stats -------------------------------------------------------------------------------

STATS_HEADERS = (
    "NAME|KIND|SESSION|HOST|CPU %|MEM MB|MEM LIMIT|MEM %|NET RX/TX MB|BLOCK R/W MB|STATUS"
).split("|")


def _stats_row(c: ContainerStats) -> list[Any]:
    return [
        c.name,
        c.kind,
        c.session_id,
        c.host,
        f"{c.cpu_percent:.1f}",
        f"{c.memory_used_mb:.1f}",
        f"{c.memory_limit_mb:.0f}",
        f"{c.memory_percent:.1f}",
        f"{c.network_rx_mb:.2f}/{c.network_tx_mb:.2f}",
        f"{c.disk_read_mb:.2f}/{c.disk_write_mb:.2f}",
        c.status,
    ]


def _totals(containers: Sequence[ContainerStats]) -> ContainerStats:
    """Sums over every container (memory % is of the summed limits)."""
    fields = (
        "cpu_percent memory_used_mb memory_limit_mb network_rx_mb network_tx_mb "
        "disk_read_mb disk_write_mb"
    ).split()
    sums = {f: sum(getattr(c, f) for c in containers) for f in fields}
    limit = sums["memory_limit_mb"]
    percent = 100.0 * sums["memory_used_mb"] / limit if limit else 0.0
    return ContainerStats(
        container_id="",
        name="TOTAL",
        status=f"{len(containers)} containers",
        memory_percent=percent,
        **sums,
    )


def _stats_table(stats: AggregateStats) -> str:
    """Per-container table plus a totals row."""
    rows = [_stats_row(c) for c in stats.containers]
    rows.append(_stats_row(_totals(stats.containers)))
    return _table(rows, STATS_HEADERS, right=range(4, 10))


def _show_stats(stats: AggregateStats, as_json: bool) -> None:
    if as_json:
        print(stats.model_dump_json(), flush=True)
        return
    print(_stats_table(stats))
    if stats.hosts:
        print(f"hosts: {', '.join(stats.hosts)}")
    for error in stats.errors:
        print(f"warning: {error}", file=sys.stderr)


def _cmd_stats(client: OrchestratorClient, args: argparse.Namespace) -> int:
    if not args.watch:
        _show_stats(client.stats(timeout=args.call_timeout), args.json)
        return EXIT_OK
    try:
        while True:
            stats = client.stats(timeout=args.call_timeout)
            if not args.json:
                sys.stdout.write(CLEAR_SCREEN)
            _show_stats(stats, args.json)
            if not args.json:
                print(f"\nrefreshing every {args.interval:g} s; Ctrl-C to stop", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


# -- cleanup and sessions ----------------------------------------------------------------


def _cmd_cleanup_session(client: OrchestratorClient, args: argparse.Namespace) -> int:
    report = client.cleanup_session(
        args.session_id, force=not args.graceful, timeout=max(args.call_timeout, 300)
    )
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(
            f"session {report.session_id}: removed {report.containers_removed} containers, "
            f"{report.networks_removed} networks, {report.volumes_removed} volumes"
            + (f" on {', '.join(report.hosts)}" if report.hosts else "")
        )
        for error in report.errors:
            print(f"warning: {error}", file=sys.stderr)
    return EXIT_FAILED if report.errors else EXIT_OK


def _cmd_cleanup_networks(client: OrchestratorClient, args: argparse.Namespace) -> int:
    reply = client.cleanup_networks(timeout=max(args.call_timeout, 300))
    if args.json:
        _print_json(reply)
    else:
        print(f"removed {reply.get('removed', 0)} unused networks")
        for error in reply.get("errors") or []:
            print(f"warning: {error}", file=sys.stderr)
    return EXIT_FAILED if reply.get("errors") else EXIT_OK


def _cmd_session_touch(client: OrchestratorClient, args: argparse.Namespace) -> int:
    reply = client.touch_session(args.session_id, args.extend, timeout=args.call_timeout)
    if args.json:
        _print_json(reply)
    else:
        print(f"session {reply.get('session_id')} expires at {reply.get('expires_at')}")
    return EXIT_OK


# -- doctor ------------------------------------------------------------------------------


def _check_registry(client: OrchestratorClient) -> str:
    client.redis.ping()
    return _sanitize(client.settings.registry_url)


def _check_broker(client: OrchestratorClient) -> str:
    with client.app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    return _sanitize(client.settings.broker_url)


def _check_hosts(client: OrchestratorClient) -> str:
    hosts = HostRegistry(client.redis, client.settings.host_ttl_seconds).live_hosts()
    if not hosts:
        raise CliError(f"no live Docker host: {START_WORKER}")
    return ", ".join(hosts)


def _check_workers(client: OrchestratorClient) -> str:
    replies = client.app.control.ping(timeout=1.0)
    if not replies:
        raise CliError(f"no worker answered a ping on this broker: {START_WORKER}")
    return f"{len(replies)} answered a ping"


DOCTOR_CHECKS: list[tuple[str, Callable[[OrchestratorClient], str]]] = [
    ("registry redis", _check_registry),
    ("broker", _check_broker),
    ("docker hosts", _check_hosts),
    ("workers", _check_workers),
]


def _cmd_doctor(client: OrchestratorClient, args: argparse.Namespace) -> int:
    results = []
    for name, check in DOCTOR_CHECKS:
        try:
            results.append({"check": name, "ok": True, "detail": check(client)})
        except Exception as exc:  # noqa: BLE001 - diagnosing failures is the point
            results.append({"check": name, "ok": False, "detail": _describe(exc)})
    if args.json:
        _print_json(results)
    else:
        for item in results:
            print(f"{'ok  ' if item['ok'] else 'FAIL'}  {item['check']:<15} {item['detail']}")
    return EXIT_OK if all(item["ok"] for item in results) else EXIT_FAILED


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CliError) else f"{type(exc).__name__}: {exc}"


# -- parser ------------------------------------------------------------------------------


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _leaf(
    parent: Any, name: str, handler: Handler, help_text: str, json_flag: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=handler)
    if json_flag:
        _json_flag(parser)
    return parser


def _add_run_limits(run: argparse.ArgumentParser) -> None:
    run.add_argument("--memory-mb", type=int, metavar="N", help="memory limit in MiB")
    run.add_argument("--cpu", type=float, metavar="N", help="CPU cores")
    run.add_argument(
        "--timeout", dest="timeout_seconds", type=int, metavar="N", help="run time limit (s)"
    )
    run.add_argument("--pids", type=int, metavar="N", help="process limit")
    run.add_argument("--network", choices=["none", "bridge", "session"], help="network mode")
    run.add_argument("--no-cleanup", action="store_true", help="keep the container afterwards")
    build = run.add_mutually_exclusive_group()
    build.add_argument("--dockerfile-inline", metavar="TEXT", help="build from this Dockerfile")
    build.add_argument(
        "--build-context", metavar="DIR", help="build from a directory on the worker"
    )


def _add_tool_run(tools: Any) -> None:
    run = _leaf(tools, "run", _cmd_tool_run, "run a tool in a fresh container and print its result")
    run.add_argument("--image", metavar="IMG", help="image to run")
    run.add_argument("--session", metavar="S", help="session id")
    run.add_argument("--tool-name", metavar="N", help="tool name (default: from the image)")
    run.add_argument("--param", action="append", metavar="KEY=VALUE", help="parameter (JSON)")
    run.add_argument("--secret", action="append", metavar="KEY=VALUE", help="secret parameter")
    run.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable")
    _add_run_limits(run)
    run.add_argument("--request", metavar="FILE", help="request JSON file ('-': stdin); flags win")
    run.add_argument("--detach", action="store_true", help="print the execution id and return")
    run.add_argument("--wait-timeout", type=float, metavar="S", help="stop waiting after S s")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    run.add_argument("command", nargs="*", metavar="COMMAND", help="command, after --")


def _add_tool(groups: Any) -> None:
    tools = groups.add_parser("tool", help="tool executions").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    _add_tool_run(tools)
    show = _leaf(tools, "show", _cmd_tool_show, "show a run's result or current state")
    show.add_argument("execution_id", metavar="ID")
    logs = _leaf(tools, "logs", _cmd_tool_logs, "print a run's stdout and stderr")
    logs.add_argument("execution_id", metavar="ID")
    logs.add_argument("-f", "--follow", action="store_true", help="stream output as it comes")
    cancel = _leaf(tools, "cancel", _cmd_tool_cancel, "cancel a run")
    cancel.add_argument("execution_id", metavar="ID")


def _add_relic_start(relics: Any) -> None:
    start = _leaf(relics, "start", _cmd_relic_start, "start a relic and wait until healthy")
    start.add_argument("--image", metavar="IMG", required=True)
    start.add_argument("--session", metavar="S", required=True)
    start.add_argument("--name", metavar="N", required=True, help="relic name")
    start.add_argument("--port", type=int, metavar="PORT", help="service port (default 8000)")
    start.add_argument("--health", metavar="PATH", help="health endpoint (default /health)")
    start.add_argument("--health-timeout", type=float, metavar="S")
    start.add_argument("--env", action="append", metavar="KEY=VALUE")
    start.add_argument("--publish", action="append", metavar="CONTAINER:HOST")
    start.add_argument("--memory-mb", type=int, metavar="N")
    start.add_argument("--cpu", type=float, metavar="N")
    start.add_argument("--wait-timeout", type=float, metavar="S", help="stop waiting after S s")
    start.add_argument("command", nargs="*", metavar="COMMAND", help="command, after --")


def _add_relic(groups: Any) -> None:
    relics = groups.add_parser("relic", help="session-scoped service containers").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    _add_relic_start(relics)
    ls = _leaf(relics, "ls", _cmd_relic_ls, "list relics")
    ls.add_argument("--session", metavar="S", help="only this session's relics")
    for verb, handler, text in (
        ("show", _cmd_relic_show, "show a relic"),
        ("stop", _cmd_relic_stop, "stop a relic"),
        ("rm", _cmd_relic_rm, "remove a relic's container"),
    ):
        _leaf(relics, verb, handler, text).add_argument("relic_id", metavar="ID")


def _add_misc(groups: Any) -> None:
    stats = _leaf(groups, "stats", _cmd_stats, "resource usage of every managed container")
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument("--interval", type=float, default=2.0, metavar="S")
    cleanup = groups.add_parser("cleanup", help="remove leftovers").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    session = _leaf(cleanup, "session", _cmd_cleanup_session, "remove a session's resources")
    session.add_argument("session_id", metavar="ID")
    session.add_argument("--graceful", action="store_true", help="stop containers, no force")
    _leaf(cleanup, "networks", _cmd_cleanup_networks, "remove unused managed networks")
    sessions = groups.add_parser("session", help="sessions").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    touch = _leaf(sessions, "touch", _cmd_session_touch, "keep a session alive")
    touch.add_argument("session_id", metavar="ID")
    touch.add_argument("--extend", type=float, default=3600, metavar="SECONDS")
    _leaf(groups, "doctor", _cmd_doctor, "check the broker, Redis and workers")
    completion = groups.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash"])
    completion.set_defaults(local=True)


def build_parser() -> argparse.ArgumentParser:
    """The ``orchestrator`` argument parser (also the source of the completion script)."""
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Run tools and relics in Docker through orchestrator's Celery workers.",
    )
    parser.add_argument("--broker", metavar="URL", help="overrides ORCHESTRATOR_BROKER_URL")
    parser.add_argument("--backend", metavar="URL", help="overrides ORCHESTRATOR_RESULT_BACKEND")
    parser.add_argument(
        "--timeout",
        dest="call_timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for a task's answer (default 60)",
    )
    parser.set_defaults(local=False)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _add_tool(groups)
    _add_relic(groups)
    _add_misc(groups)
    return parser


# -- completion --------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> list[str]:
    words = list(_subcommands(parser))
    for action in parser._actions:
        words += action.option_strings
        if not action.option_strings and action.choices and not _subcommands(parser):
            words += [str(c) for c in action.choices]
    return words


def _command_tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    tree = {path: _words(parser)}
    for name, sub in _subcommands(parser).items():
        tree.update(_command_tree(sub, f"{path} {name}".strip()))
    return tree


def _value_completions(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option -> bash ``compgen`` arguments for its value."""
    found: dict[str, str] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if action.choices:
                found[option] = "-W '" + " ".join(map(str, action.choices)) + "'"
            elif action.metavar in ("FILE", "DIR"):
                found[option] = "-f"
    for sub in _subcommands(parser).values():
        found.update(_value_completions(sub))
    return found


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``'s subcommands, options and choices."""
    tree = _command_tree(parser)
    paths = "|".join(f'"{p}"' for p in tree if p)
    cases = "\n".join(f'        "{p}") words="{" ".join(w)}" ;;' for p, w in tree.items())
    values = "\n".join(
        f'        {o}) COMPREPLY=($(compgen {a} -- "$cur")); return 0 ;;'
        for o, a in sorted(_value_completions(parser).items())
    )
    prog = parser.prog
    return f"""# bash completion for {prog}; load it with: source <({prog} completion bash)
_{parser.prog}() {{
    local cur prev path word words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == "--" ]] && return 0
        case "${{path:+$path }}$word" in
            {paths}) path="${{path:+$path }}$word" ;;
        esac
    done
    case "$prev" in
{values}
    esac
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _{parser.prog} {parser.prog}
"""


# -- entry point -------------------------------------------------------------------------


def _unreachable_part(exc: BaseException) -> str:
    """``broker`` or ``backend`` when ``exc`` (or its cause) is a failed connection, else ''."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    if any(isinstance(e, OperationalError) for e in chain):
        return "broker"
    if any(isinstance(e, redis.exceptions.ConnectionError) for e in chain):
        return "backend"
    return ""


def _unreachable(part: str, settings: Settings | None) -> str:
    if part == "broker":
        url = _sanitize(settings.broker_url) if settings else "the configured URL"
        what, option = "broker", "--broker (ORCHESTRATOR_BROKER_URL)"
    else:
        url = _sanitize(settings.result_backend) if settings else "the configured URL"
        if settings and settings.registry_url != settings.result_backend:
            url += f" or the registry at {_sanitize(settings.registry_url)}"
        what, option = "result backend", "--backend (ORCHESTRATOR_RESULT_BACKEND)"
    return (
        f"cannot reach the {what} at {url}: is Redis running? start it (`redis-server`, or "
        f"`docker run -d -p 6379:6379 redis:7`) or point {option} at a running one"
    )


def _error_message(exc: Exception, args: argparse.Namespace, settings: Settings | None) -> str:
    """The one-line explanation (with the fix) of an error, or '' to let it propagate."""
    if isinstance(exc, CliError | InvalidRequest):
        return str(exc)
    if isinstance(exc, OrchestratorTimeout):
        return _no_worker(args.call_timeout)
    if isinstance(exc, OrchestratorError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OperationalError | redis.exceptions.RedisError | RuntimeError):
        part = _unreachable_part(exc)
        return _unreachable(part, settings) if part else ""
    return ""


def _run(args: argparse.Namespace) -> int:
    settings: Settings | None = None
    try:
        settings = _settings(args)
        client = _make_client(settings)
        try:
            return int(args.func(client, args))
        finally:
            with contextlib.suppress(Exception):  # closing a dead connection must not mask
                client.close()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = _error_message(exc, args, settings)
        if not message:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run the ``orchestrator`` command.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit code: 0 success, 1 a run that did not succeed, 2 an error to fix.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.local:
        print(bash_completion(parser), end="")
        return EXIT_OK
    try:
        return _run(args)
    except BrokenPipeError:  # `orchestrator ... | head`: silence the flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
