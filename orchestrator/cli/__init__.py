"""The ``orchestrator`` command: tool runs, relics, stats, cleanup, sessions, diagnostics,
settings and a local development stack.

Each subcommand is one small function ``_cmd_<group>_<verb>(client, args) -> int`` over
:class:`~orchestrator.client.OrchestratorClient`. Output is for humans by default and
JSON with ``--json``. Errors go to stderr as ``error: ...`` with the fix. Exit codes
(:data:`~orchestrator.cli.errors.EXIT_CODES`, listed by ``--help``): 0 success, 1 a run,
exec, cleanup or check that did not succeed, 2 a usage error or a request to fix, 69 Redis
or the broker unreachable, 75 no answer in time, 130 interrupted. ``--wait S`` (before or
after the command) is how long a command waits for its answer.

::

    orchestrator tool run --image busybox --session s1 --param N=3 -- sh -c 'echo "$N"'
    orchestrator tool logs --follow EXECUTION_ID
    orchestrator relic ls --session s1
    orchestrator stats --watch
    orchestrator stats --wait 5 RELIC_OR_EXECUTION_ID
    orchestrator up && orchestrator doctor && orchestrator down
    orchestrator config --json
    source <(orchestrator completion bash)    # or zsh; fish: orchestrator completion fish | source

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
from orchestrator.cli.completion import bash_completion, completion_script
from orchestrator.cli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError, _error_message, exit_code
from orchestrator.cli.output import _table as _table
from orchestrator.cli.parser import DEFAULT_WAIT_SECONDS, build_parser
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


def _resolve_wait(args: argparse.Namespace) -> None:
    """``--wait``, before or after the command, is how long the command waits.

    Commands with a wait of their own (``--wait-timeout``: ``tool run``, ``relic start``,
    ``up``) keep their default unless a ``--wait`` is given; the others wait
    :data:`~orchestrator.cli.parser.DEFAULT_WAIT_SECONDS`.
    """
    given = args.call_timeout
    if given is not None and getattr(args, "wait_timeout", 0) is None:
        args.wait_timeout = given
    args.call_timeout = DEFAULT_WAIT_SECONDS if given is None else given


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
        return exit_code(exc)


def main(argv: list[str] | None = None) -> int:
    """Run the ``orchestrator`` command.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit code (:data:`~orchestrator.cli.errors.EXIT_CODES`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.local:
        print(completion_script(parser, args.shell), end="")
        return EXIT_OK
    _resolve_wait(args)
    try:
        return _run(args)
    except BrokenPipeError:  # `orchestrator ... | head`: silence the flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
