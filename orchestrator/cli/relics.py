"""``orchestrator relic start|ls|show|stop|rm``: session-scoped service containers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from orchestrator.cli.errors import EXIT_OK, EXIT_TEMPFAIL, START_WORKER_HINT, CliError
from orchestrator.cli.output import _fields, _print_json, _table
from orchestrator.cli.request import _relic_request
from orchestrator.cli.tools import RUN_WAIT_SLACK_SECONDS
from orchestrator.client.sync import OrchestratorClient
from orchestrator.errors import OrchestratorTimeout
from orchestrator.models import RelicInfo


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
            f"{START_WORKER_HINT}; a slow image pull needs a larger --wait",
            EXIT_TEMPFAIL,
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
