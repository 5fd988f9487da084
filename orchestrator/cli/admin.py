"""``orchestrator stats``, ``cleanup``, ``session touch`` and ``doctor``."""

from __future__ import annotations

import argparse
import base64
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.cli.errors import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    _unreachable,
    _unreachable_part,
)
from orchestrator.cli.output import _print_json, _sanitize, _table
from orchestrator.client.sync import OrchestratorClient
from orchestrator.models import AggregateStats, ContainerStats

CLEAR_SCREEN = "\x1b[H\x1b[2J"
START_STACK = (
    "start one with `orchestrator up` or `celery -A worker worker` (see docs/operations.md)"
)
START_BEAT = "start beat with `celery -A worker beat` or `orchestrator up`"
JANITOR_STALE_FACTOR = 3  # intervals without a pass before the janitor counts as stopped
DEFAULT_FLOWER_URL = "http://127.0.0.1:5555"


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


def _show_stats(stats: AggregateStats | ContainerStats, as_json: bool) -> None:
    if as_json:
        print(stats.model_dump_json(), flush=True)
        return
    if isinstance(stats, ContainerStats):  # `stats ID`: its row, no totals
        print(_table([_stats_row(stats)], STATS_HEADERS, right=range(4, 10)), flush=True)
        return
    print(_stats_table(stats))
    if stats.hosts:
        print(f"hosts: {', '.join(stats.hosts)}")
    for error in stats.errors:
        print(f"warning: {error}", file=sys.stderr)


def _stats_of(
    client: OrchestratorClient, args: argparse.Namespace
) -> AggregateStats | ContainerStats:
    """Every container's stats, or one container's (``stats ID``)."""
    if args.container is None:
        return client.stats(timeout=args.call_timeout)
    return client.container_stats(args.container, timeout=args.call_timeout)


def _cmd_stats(client: OrchestratorClient, args: argparse.Namespace) -> int:
    if not args.watch:
        _show_stats(_stats_of(client, args), args.json)
        return EXIT_OK
    try:
        while True:
            stats = _stats_of(client, args)
            if not args.json:
                sys.stdout.write(CLEAR_SCREEN)
            _show_stats(stats, args.json)
            if not args.json:
                print(f"\nrefreshing every {args.interval:g} s; Ctrl-C to stop", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


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


def _check_registry(client: OrchestratorClient, args: argparse.Namespace) -> str:
    client.ping_registry()
    return _sanitize(client.settings.registry_url)


def _check_broker(client: OrchestratorClient, args: argparse.Namespace) -> str:
    with client.app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    return _sanitize(client.settings.broker_url)


def _check_hosts(client: OrchestratorClient, args: argparse.Namespace) -> str:
    hosts = client.live_hosts()
    if not hosts:
        raise CliError(f"no live Docker host: {START_STACK}")
    return ", ".join(hosts)


def _check_workers(client: OrchestratorClient, args: argparse.Namespace) -> str:
    replies = client.app.control.ping(timeout=1.0)
    if not replies:
        raise CliError(f"no worker answered a ping on this broker: {START_STACK}")
    return f"{len(replies)} answered a ping"


def _check_janitor(client: OrchestratorClient, args: argparse.Namespace) -> str:
    interval = client.settings.janitor_interval_seconds
    try:
        last = client.janitor_last_run()
        if last is None:
            raise CliError(
                f"no janitor pass recorded (beat sends the first {interval:g} s after it "
                f"starts): {START_BEAT}"
            )
        age = time.time() - float(last["at"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CliError(f"unreadable janitor summary ({exc}): {START_BEAT}") from exc
    if age > JANITOR_STALE_FACTOR * interval:
        raise CliError(f"no janitor pass for {age:.0f} s: {START_BEAT}")
    hosts = ", ".join(last.get("hosts") or []) or "none"
    return f"last pass {max(age, 0):.0f} s ago (every {interval:g} s), hosts: {hosts}"


def flower_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why ``GET <url>/healthcheck`` fails, or None when Flower answers it (no proxy).

    Credentials in ``url`` (``http://user:pass@host:5555``) go in an Authorization header.
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    target = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    request = urllib.request.Request(target + "/healthcheck")
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a private address
    try:
        with direct.open(request, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:  # URLError, refused, timeout, a malformed URL
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"
    return None


def _check_flower(client: OrchestratorClient, args: argparse.Namespace) -> str:
    url = _sanitize(args.flower_url).rstrip("/")
    problem = flower_problem(args.flower_url)
    if problem:
        raise CliError(
            f"no answer from Flower at {url}/healthcheck ({problem}): start it with "
            "`orchestrator up` or `celery -A worker flower --port=5555`, or point --flower-url "
            "at the one you run"
        )
    return f"{url}/healthcheck answered"


DoctorCheck = Callable[[OrchestratorClient, argparse.Namespace], str]

DOCTOR_CHECKS: list[tuple[str, DoctorCheck]] = [
    ("registry redis", _check_registry),
    ("broker", _check_broker),
    ("docker hosts", _check_hosts),
    ("workers", _check_workers),
    ("janitor", _check_janitor),
    ("flower", _check_flower),
]
DOCTOR_CHECK_NAMES = [name for name, _ in DOCTOR_CHECKS]


def _cmd_doctor(client: OrchestratorClient, args: argparse.Namespace) -> int:
    results = []
    skipped = set(args.skip or [])
    for name, check in DOCTOR_CHECKS:
        if name.replace(" ", "-") in skipped:
            continue
        try:
            results.append({"check": name, "ok": True, "detail": check(client, args)})
        except Exception as exc:  # noqa: BLE001 - diagnosing failures is the point
            results.append({"check": name, "ok": False, "detail": _describe(exc, client)})
    if args.json:
        _print_json(results)
    else:
        for item in results:
            print(f"{'ok  ' if item['ok'] else 'FAIL'}  {item['check']:<15} {item['detail']}")
    return EXIT_OK if all(item["ok"] for item in results) else EXIT_FAILED


def _describe(exc: BaseException, client: OrchestratorClient) -> str:
    """A failed check in one line, ending with what to do about it."""
    if isinstance(exc, CliError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    part = _unreachable_part(exc)
    if part:  # Redis or the broker is down: say so, whichever check noticed
        return f"{text}; {_unreachable(part, client.settings)}"
    return text
