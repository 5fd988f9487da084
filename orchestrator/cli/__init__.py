"""The ``orchestrator`` command: tool runs, relics, stats, cleanup, sessions, diagnostics,
settings and a local development stack.

Each subcommand is one small function ``_cmd_<group>_<verb>(client, args) -> int`` over
:class:`~orchestrator.client.OrchestratorClient`. Output is for humans by default and
JSON with ``--json``. Exit codes: 0 success, 1 a tool run (or cleanup) that did not
succeed, 2 an error the user can fix, printed to stderr as ``error: ...`` with the fix.

::

    orchestrator tool run --image busybox --session s1 --param N=3 -- sh -c 'echo "$N"'
    orchestrator tool logs --follow EXECUTION_ID
    orchestrator relic ls --session s1
    orchestrator stats --watch
    orchestrator up && orchestrator doctor && orchestrator down
    orchestrator config --json
    source <(orchestrator completion bash)

The package: :mod:`~orchestrator.cli.parser` builds the parser whose handlers live in
:mod:`~orchestrator.cli.tools`, :mod:`~orchestrator.cli.relics`,
:mod:`~orchestrator.cli.admin`, :mod:`~orchestrator.cli.config` and
:mod:`~orchestrator.cli.stack` (``up``/``down``); :mod:`~orchestrator.cli.errors` turns
errors into exit codes and messages; this module builds the client and runs the command
(``config`` and ``down`` get the settings instead of a client).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from orchestrator.cli.admin import CLEAR_SCREEN as CLEAR_SCREEN
from orchestrator.cli.admin import STATS_HEADERS as STATS_HEADERS
from orchestrator.cli.completion import bash_completion
from orchestrator.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError, _error_message
from orchestrator.cli.output import _table as _table
from orchestrator.cli.parser import build_parser
from orchestrator.cli.tools import RUN_WAIT_SLACK_SECONDS as RUN_WAIT_SLACK_SECONDS
from orchestrator.cli.tools import _Progress as _Progress
from orchestrator.client.sync import OrchestratorClient
from orchestrator.settings import Settings

__all__ = ["main", "build_parser", "bash_completion", "CliError"]

# A CLI should fail in seconds, not retry a dead result backend for ~20 s (Celery's default).
FAIL_FAST_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


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


def _run(args: argparse.Namespace) -> int:
    settings: Settings | None = None
    try:
        settings = _settings(args)
        if args.settings_func is not None:  # config, down: no client, no connection
            return int(args.settings_func(settings, args))
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
