"""``orchestrator relic exec RELIC_ID -- CMD...``: run a command in a running relic.

Human output passes the command's stdout and stderr through and exits with its exit code
(124 when it was killed at its timeout, 1 when it was cancelled or could not run, with the
reason on stderr); ``--json`` prints the ExecResult.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.errors import EXIT_FAILED, CliError
from orchestrator.cli.request import _pairs
from orchestrator.client.sync import OrchestratorClient
from orchestrator.models import ExecResult

__all__ = ["add_relic_exec", "EXIT_TIMED_OUT"]

#: The exit code of a command killed at its timeout (as timeout(1) says it).
EXIT_TIMED_OUT = 124


def add_relic_exec(relics: Any, leaf: Any) -> None:
    """Add ``relic exec`` to the ``relic`` subcommands (``leaf`` makes a subcommand)."""
    run = leaf(relics, "exec", _cmd_relic_exec, "run a command in a running relic")
    run.add_argument("relic_id", metavar="ID")
    run.add_argument("--stdin-file", metavar="FILE", help="give FILE ('-': this stdin) as stdin")
    run.add_argument(
        "--timeout", dest="exec_timeout", type=int, metavar="N",
        help="kill the command after N s (default 60; at most the relic's timeout_seconds)",
    )  # fmt: skip
    run.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="environment")
    run.add_argument("--secret", action="append", metavar="KEY=VALUE", help="secret variable")
    run.add_argument("--workdir", metavar="DIR", help="working directory in the container")
    run.add_argument("--session", metavar="S", help="refuse unless the relic is in session S")
    run.add_argument("--wait-timeout", type=float, metavar="S", help="stop waiting after S s")
    run.add_argument("command", nargs="+", metavar="CMD", help="the command, after --")


def _stdin(source: str | None) -> str | None:
    if source is None:
        return None
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--stdin-file: cannot read {source}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"--stdin-file: {source} is not UTF-8 text ({exc.reason})") from exc


def exit_code(result: ExecResult) -> int:
    """The command's exit code; 124 for a timeout, 1 when it was cancelled or did not run."""
    if result.status in ("succeeded", "failed") and result.exit_code is not None:
        return result.exit_code
    return EXIT_TIMED_OUT if result.status == "timed_out" else EXIT_FAILED


def _cmd_relic_exec(client: OrchestratorClient, args: argparse.Namespace) -> int:
    timeout = 60 if args.exec_timeout is None else args.exec_timeout
    result = client.exec_in_relic(
        args.relic_id,
        list(args.command),
        stdin=_stdin(args.stdin_file),
        timeout=timeout,
        environment=_pairs(args.env, "--env"),
        secret_parameters=_pairs(args.secret, "--secret"),
        working_dir=args.workdir,
        session_id=args.session,
        wait_timeout=args.wait_timeout,
    )
    if args.json:
        print(result.model_dump_json(indent=2))
        return exit_code(result)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    if result.stdout_truncated or result.stderr_truncated:
        print("orchestrator: output truncated (head and tail kept)", file=sys.stderr)
    if result.status not in ("succeeded", "failed"):
        print(f"orchestrator: {result.status}: {result.error}", file=sys.stderr)
    return exit_code(result)
