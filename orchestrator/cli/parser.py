"""The ``orchestrator`` argument parser: every subcommand, its flags and its handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from orchestrator import __version__
from orchestrator.cli.admin import (
    DEFAULT_FLOWER_URL,
    DOCTOR_CHECK_NAMES,
    _cmd_cleanup_networks,
    _cmd_cleanup_session,
    _cmd_doctor,
    _cmd_session_touch,
    _cmd_stats,
)
from orchestrator.cli.config import _cmd_config
from orchestrator.cli.errors import EXIT_CODES
from orchestrator.cli.relic_cp import add_relic_cp
from orchestrator.cli.relic_exec import add_relic_exec
from orchestrator.cli.relics import (
    _cmd_relic_ls,
    _cmd_relic_rm,
    _cmd_relic_show,
    _cmd_relic_start,
    _cmd_relic_stop,
)
from orchestrator.cli.stack import (
    DEFAULT_STATE_DIR,
    STOP_GRACE_SECONDS,
    UP_WAIT_SECONDS,
    _cmd_down,
    _cmd_up,
)
from orchestrator.cli.tools import _cmd_tool_cancel, _cmd_tool_logs, _cmd_tool_run, _cmd_tool_show
from orchestrator.client.sync import OrchestratorClient
from orchestrator.settings import Settings

Handler = Callable[[OrchestratorClient, argparse.Namespace], int]
SettingsHandler = Callable[[Settings, argparse.Namespace], int]  # commands without a client

#: How long a command waits for an answer unless --wait says otherwise.
DEFAULT_WAIT_SECONDS = 60.0
WAIT_HELP = f"seconds to wait for an answer (default {DEFAULT_WAIT_SECONDS:g})"
SHELLS = ("bash", "zsh", "fish")
OLD_TIMEOUT_HINT = (
    "; the wait for an answer is --wait S (--timeout is only `tool run`'s time limit of the "
    "container)"
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors point the old global ``--timeout`` to ``--wait``."""

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error (with the hint when it fits), exit 2."""
        if "--timeout" in message and "unrecognized arguments" in message:
            message += OLD_TIMEOUT_HINT
        super().error(message)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _leaf(
    parent: Any,
    name: str,
    handler: Handler,
    help_text: str,
    json_flag: bool = True,
    wait_flag: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=handler)
    if json_flag:
        _json_flag(parser)
    if wait_flag:  # also after the command; SUPPRESS keeps a --wait given before it
        parser.add_argument(
            "--wait", dest="call_timeout", type=float, default=argparse.SUPPRESS, metavar="S",
            help=WAIT_HELP,
        )  # fmt: skip
    return parser


def _local_leaf(parent: Any, name: str, handler: SettingsHandler, help_text: str) -> Any:
    """A command that needs the settings but no client (no broker, no backend)."""
    parser = _leaf(parent, name, _cmd_needs_no_client, help_text, wait_flag=False)
    parser.set_defaults(settings_func=handler)
    return parser


def _cmd_needs_no_client(client: OrchestratorClient, args: argparse.Namespace) -> int:
    raise AssertionError("handled by settings_func")  # pragma: no cover


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
    run.add_argument(
        "--wait-timeout", type=float, metavar="S",
        help="same as --wait (default: the run's --timeout + 120 s)",
    )  # fmt: skip
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
    start.add_argument("--image", metavar="IMG", required=True, help="image to run")
    start.add_argument("--session", metavar="S", required=True, help="session id")
    start.add_argument("--name", metavar="N", required=True, help="relic name")
    start.add_argument("--port", type=int, metavar="PORT", help="service port (default 8000)")
    health = start.add_mutually_exclusive_group()
    health.add_argument("--health", metavar="PATH", help="health endpoint (default /health)")
    health.add_argument(
        "--no-health", action="store_true", help="a workspace: ready once its process runs"
    )
    start.add_argument(
        "--health-timeout", type=float, metavar="S",
        help="how long it may take to become healthy (default 60)",
    )  # fmt: skip
    start.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="environment variable (repeatable)"
    )
    start.add_argument(
        "--publish", action="append", metavar="CONTAINER:HOST",
        help="publish a container port on a host port (repeatable)",
    )  # fmt: skip
    start.add_argument("--memory-mb", type=int, metavar="N", help="memory limit in MiB (1024)")
    start.add_argument("--cpu", type=float, metavar="N", help="CPU cores (default 2.0)")
    start.add_argument(
        "--wait-timeout", type=float, metavar="S",
        help="same as --wait (default: --health-timeout + 120 s)",
    )  # fmt: skip
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
    add_relic_exec(relics, _leaf)
    add_relic_cp(relics, _leaf)


def _add_misc(groups: Any) -> None:
    stats = _leaf(
        groups, "stats", _cmd_stats, "resource usage of every managed container, or of one"
    )
    stats.add_argument(
        "container", nargs="?", metavar="ID",
        help="only this container: a container, execution or relic id",
    )  # fmt: skip
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes (2)"
    )
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
    touch.add_argument(
        "--extend", type=float, default=3600, metavar="SECONDS",
        help="keep it alive this long from now (default 3600)",
    )  # fmt: skip
    _add_doctor(groups)
    _add_stack(groups)
    completion = groups.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script: `source <(orchestrator completion bash)` in "
        "~/.bashrc, `source <(orchestrator completion zsh)` in ~/.zshrc, "
        "`orchestrator completion fish | source` in ~/.config/fish/config.fish.",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))
    completion.set_defaults(local=True)


def _add_doctor(groups: Any) -> None:
    doctor = _leaf(
        groups, "doctor", _cmd_doctor, "check Redis, the broker, hosts, workers, janitor, Flower"
    )
    doctor.add_argument(
        "--flower-url",
        default=DEFAULT_FLOWER_URL,
        metavar="URL",
        help=f"where Flower answers /healthcheck (default {DEFAULT_FLOWER_URL})",
    )
    names = [name.replace(" ", "-") for name in DOCTOR_CHECK_NAMES]
    doctor.add_argument(
        "--skip", action="append", choices=names, metavar="CHECK",
        help="leave out a check (repeatable): " + ", ".join(names),
    )  # fmt: skip


def _add_stack(groups: Any) -> None:
    config = _local_leaf(groups, "config", _cmd_config, "print the effective settings")
    config.add_argument(
        "--markdown", action="store_true", help="print the reference table of every setting"
    )
    up = _leaf(groups, "up", _cmd_up, "start a local worker, beat and Flower")
    up.description = (
        "Start a worker, beat and Flower for this host in the background, from the directory "
        "holding worker.py, and wait for the worker's heartbeat. Logs and pid files go in "
        f"ORCHESTRATOR_STATE_DIR (default {DEFAULT_STATE_DIR}); running ones are left alone. "
        "Redis and the Docker engine are not started: `make setup` does that."
    )
    up.add_argument(
        "--flower-port", type=int, default=5555, metavar="PORT", help="Flower's port (5555)"
    )
    up.add_argument(
        "--flower-address", default="127.0.0.1", metavar="ADDR",
        help="the address Flower listens on (default 127.0.0.1)",
    )  # fmt: skip
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.add_argument("--no-beat", action="store_true", help="do not start beat (the janitor)")
    up.add_argument(
        "--wait-timeout", type=float, metavar="S",
        help=f"same as --wait: for the worker's heartbeat (default {UP_WAIT_SECONDS:g})",
    )  # fmt: skip
    down = _local_leaf(groups, "down", _cmd_down, "stop what `orchestrator up` started")
    down.add_argument(
        "--grace", type=float, default=STOP_GRACE_SECONDS, metavar="S",
        help=f"seconds between SIGTERM and SIGKILL (default {STOP_GRACE_SECONDS:g})",
    )  # fmt: skip


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        "--wait S goes before or after the command; `tool run`, `relic start` and `up` wait "
        "for their own default unless given.\n\nexit codes:\n" + codes
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``orchestrator`` argument parser (also the source of the completion scripts)."""
    parser = _Parser(
        prog="orchestrator",
        description="Run tools and relics in Docker through orchestrator's Celery workers.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--broker", metavar="URL", help="overrides ORCHESTRATOR_BROKER_URL")
    parser.add_argument("--backend", metavar="URL", help="overrides ORCHESTRATOR_RESULT_BACKEND")
    parser.add_argument("--wait", dest="call_timeout", type=float, metavar="S", help=WAIT_HELP)
    parser.add_argument(
        "--timeout", dest="call_timeout", type=float, metavar="S",
        help="the old name of --wait (before the command only)",
    )  # fmt: skip
    parser.set_defaults(local=False, settings_func=None)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _add_tool(groups)
    _add_relic(groups)
    _add_misc(groups)
    _own_waits(parser)
    return parser


def _own_waits(parser: argparse.ArgumentParser) -> None:
    """Point ``--wait`` of commands with a ``--wait-timeout`` (their own default) to it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _own_waits(sub)
    waits = {a.dest: a for a in parser._actions if "--wait" in a.option_strings}
    if "call_timeout" in waits and any(a.dest == "wait_timeout" for a in parser._actions):
        waits["call_timeout"].help = "seconds to wait for the answer (default: see --wait-timeout)"
