"""The ``orchestrator`` argument parser: every subcommand, its flags and its handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

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


def _local_leaf(parent: Any, name: str, handler: SettingsHandler, help_text: str) -> Any:
    """A command that needs the settings but no client (no broker, no backend)."""
    parser = _leaf(parent, name, _cmd_needs_no_client, help_text)
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
    _add_doctor(groups)
    _add_stack(groups)
    completion = groups.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash"])
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
    up.add_argument("--flower-port", type=int, default=5555, metavar="PORT")
    up.add_argument("--flower-address", default="127.0.0.1", metavar="ADDR")
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.add_argument("--no-beat", action="store_true", help="do not start beat (the janitor)")
    up.add_argument(
        "--wait-timeout", type=float, default=UP_WAIT_SECONDS, metavar="S",
        help=f"how long to wait for the worker's heartbeat (default {UP_WAIT_SECONDS:g})",
    )  # fmt: skip
    down = _local_leaf(groups, "down", _cmd_down, "stop what `orchestrator up` started")
    down.add_argument(
        "--grace", type=float, default=STOP_GRACE_SECONDS, metavar="S",
        help=f"seconds between SIGTERM and SIGKILL (default {STOP_GRACE_SECONDS:g})",
    )  # fmt: skip


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
    parser.set_defaults(local=False, settings_func=None)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _add_tool(groups)
    _add_relic(groups)
    _add_misc(groups)
    return parser
