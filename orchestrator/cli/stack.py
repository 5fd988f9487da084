"""``orchestrator up`` and ``orchestrator down``: a local development stack.

``up`` starts ``celery -A worker worker``, ``celery -A worker beat`` and ``celery -A worker
flower`` as background processes, from the directory holding ``worker.py``, with their
logs and pid files in ``ORCHESTRATOR_STATE_DIR`` (default ``/var/tmp/orchestrator``). A
process whose pid file names a live process is left alone. It then waits until this
host's worker heart-beats in Redis (and Flower answers), and prints what runs where.
``down`` stops what those pid files name: SIGTERM, then SIGKILL after a grace period.

Flower never gets default credentials from ``up``: unless the environment gives some
(``ORCHESTRATOR_FLOWER_BASIC_AUTH`` or Flower's own ``FLOWER_BASIC_AUTH``), ``up``
generates a random password for user ``admin``, keeps it in the state directory
(``flower-credentials``, mode 0600, reused by the next ``up``) and prints it. Likewise,
unless ``ORCHESTRATOR_SECRET_KEY`` is set, the processes get the Fernet key kept in
``secret-key`` there (generated once), and ``up`` prints how clients use it.

Neither starts Redis or the Docker engine: ``make setup`` does.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orchestrator
from orchestrator.cli import admin
from orchestrator.cli.errors import EXIT_OK, CliError
from orchestrator.cli.output import _print_json, _sanitize, _table
from orchestrator.client.sync import OrchestratorClient
from orchestrator.core.secrets import KEY_SETTING, generate_key, keyring
from orchestrator.settings import Settings

STATE_DIR_VARIABLE = "ORCHESTRATOR_STATE_DIR"
DEFAULT_STATE_DIR = "/var/tmp/orchestrator"
STOP_ORDER = ("beat", "flower", "worker")  # no new janitor runs first, the worker last
POLL_SECONDS = 0.25
UP_WAIT_SECONDS = 60.0
STOP_GRACE_SECONDS = 30.0
KILL_WAIT_SECONDS = 5.0
LOG_TAIL_LINES = 20
SETUP_HINT = "`orchestrator up` starts neither Redis nor the Docker engine; `make setup` does"
KEEPS_RUNNING = "what started keeps running: `orchestrator down` stops it"
CREDENTIALS_FILE = "flower-credentials"
SECRET_KEY_FILE = "secret-key"
FLOWER_USER = "admin"


def state_dir() -> Path:
    """Where logs, pid files and beat's schedule go: ``$ORCHESTRATOR_STATE_DIR``."""
    return Path(os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR)


def repository_root(cwd: Path | None = None) -> Path:
    """The directory holding ``worker.py``: beside the orchestrator package, else ``cwd``."""
    package_parent = Path(orchestrator.__file__).resolve().parent.parent
    here = cwd or Path.cwd()
    for candidate in (package_parent, here):
        if (candidate / "worker.py").is_file():
            return candidate
    raise CliError(
        f"cannot find worker.py (the Celery app) beside the orchestrator package "
        f"({package_parent}) or in the current directory ({here}): run `orchestrator up` "
        "from the repository root (a checkout, or `pip install -e .` in one)"
    )


# -- processes and pid files ---------------------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """A process's command line, or None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _alive(pid: int) -> bool:
    """True when ``pid`` is a running (not zombie) celery process."""
    try:  # our own child that exited: reap it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except OSError:  # not our child
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = _cmdline(pid)  # a reused pid, or a zombie (empty command line), is not ours
    return cmdline is None or "celery" in cmdline


def _pid_file(state: Path, name: str) -> Path:
    return state / f"{name}.pid"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (empty)"


@dataclass
class _Process:
    name: str
    argv: list[str]
    log: Path
    url: str | None = None
    pid: int | None = None
    status: str = ""
    popen: subprocess.Popen[bytes] | None = None

    def row(self) -> list[Any]:
        return [self.name, self.pid, self.status, self.url, str(self.log)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "status": self.status,
            "url": self.url,
            "log": str(self.log),
            "command": self.argv,
        }


def _processes(args: argparse.Namespace, state: Path) -> list[_Process]:
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    wanted = [_Process("worker", [*celery, "worker", "-l", "info"], state / "worker.log")]
    if not args.no_beat:
        schedule = str(state / "celerybeat-schedule")
        wanted.append(_Process("beat", [*celery, "beat", "-l", "info", "-s", schedule],
                               state / "beat.log"))  # fmt: skip
    if not args.no_flower:
        argv = [*celery, "flower", f"--port={args.flower_port}", f"--address={args.flower_address}"]
        url = f"http://{args.flower_address}:{args.flower_port}"
        wanted.append(_Process("flower", argv, state / "flower.log", url=url))
    return wanted


def _start(proc: _Process, root: Path, state: Path, env: dict[str, str]) -> None:
    with open(proc.log, "wb") as log:
        proc.popen = subprocess.Popen(
            proc.argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and the terminal's Ctrl-C
        )
    proc.pid = proc.popen.pid
    proc.status = "started"
    _pid_file(state, proc.name).write_text(f"{proc.pid}\n")


# -- waiting for readiness -----------------------------------------------------------------


def _host_registered(client: OrchestratorClient, host_name: str, since: float | None) -> bool:
    """The host has a heartbeat (written after ``since``, when given)."""
    beat = client.host_heartbeat(host_name)
    if beat is None:
        return False
    if since is None:
        return True
    try:
        return float(beat.get("seen_at", 0)) >= since
    except (ValueError, TypeError):
        return True


def _wait(
    ready: Callable[[], bool],
    started: list[_Process],
    state: Path,
    deadline: float,
    on_timeout: Callable[[], str],
) -> None:
    """Poll ``ready`` until true; fail at once if a process we started exits."""
    while not ready():
        for proc in started:
            code = proc.popen.poll() if proc.popen else None
            if code is not None:
                _pid_file(state, proc.name).unlink(missing_ok=True)
                raise CliError(
                    f"the {proc.name} exited with code {code}; last lines of {proc.log}:\n"
                    f"{_log_tail(proc.log)}\n{KEEPS_RUNNING}"
                )
        if time.monotonic() >= deadline:
            raise CliError(on_timeout())
        time.sleep(POLL_SECONDS)


def _docker_problem() -> str | None:
    """Why the Docker engine cannot be reached, or None when it answers."""
    try:
        # ``up`` runs the worker on this machine, so it checks this machine's engine.
        from orchestrator.engine.docker_engine import DockerEngine

        engine = DockerEngine.from_env(timeout_seconds=5)
        try:
            engine.ping()
        finally:
            engine.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_redis(client: OrchestratorClient) -> None:
    try:
        client.ping_registry()
    except Exception as exc:  # noqa: BLE001 - reported with the fix
        raise CliError(
            f"cannot reach Redis at {_sanitize(client.settings.registry_url)} "
            f"({type(exc).__name__}: {exc}): {SETUP_HINT} (or start `redis-server`)"
        ) from exc


def _child_env(settings: Settings, flower_auth: str | None = None) -> dict[str, str]:
    """Our environment, with what this command resolved (``--broker``, ``--backend``, the
    host name, generated Flower credentials) pinned, so the processes agree with the
    heartbeat we wait for."""
    env = {
        **os.environ,
        "ORCHESTRATOR_BROKER_URL": settings.broker_url,
        "ORCHESTRATOR_RESULT_BACKEND": settings.result_backend,
        "ORCHESTRATOR_HOST_NAME": settings.host_name,
    }
    if flower_auth:
        env["ORCHESTRATOR_FLOWER_BASIC_AUTH"] = flower_auth
    key_file = _secret_key_file(state_dir())
    if key_file is not None:
        env[KEY_SETTING] = key_file.read_text().strip()
    return env


def _secret_key_file(state: Path) -> Path | None:
    """The file holding the workers' ``ORCHESTRATOR_SECRET_KEY`` when the environment sets
    none: kept in the state directory, else made there with a new key (mode 0600), so the
    stack can decrypt secret_parameters and its clients can read the key.

    Returns:
        None when the environment sets the key (it is used as it is).
    """
    if os.environ.get(KEY_SETTING):
        return None
    path = state / SECRET_KEY_FILE
    try:
        if keyring(path.read_text().strip()) is not None:
            return path
    except (OSError, ValueError):
        pass  # missing, or not a key: a new one
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generate_key() + "\n")
    return path


def _flower_credentials(state: Path) -> str | None:
    """``user:password`` for Flower when the environment gives none: the ones kept in the
    state directory, else new random ones written there (mode 0600). Flower refuses the
    documented default, so ``up`` never lets it fall back to that.

    Returns:
        None when the environment sets Flower's credentials (they are used as they are).
    """
    if os.environ.get("ORCHESTRATOR_FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_BASIC_AUTH"):
        return None
    path = state / CREDENTIALS_FILE
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    user, _, password = saved.partition(":")
    if user and password and "," not in saved:
        return saved
    generated = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generated + "\n")
    return generated


# -- commands ------------------------------------------------------------------------------


def _report_up(
    procs: list[_Process], settings: Settings, state: Path, as_json: bool, flower_auth: str | None
) -> None:
    has_flower = any(p.name == "flower" for p in procs)
    if as_json:
        report: dict[str, Any] = {
            "host": settings.host_name,
            "registry": _sanitize(settings.registry_url),
            "state_dir": str(state),
            "processes": [p.as_dict() for p in procs],
        }
        if has_flower and flower_auth:
            user, _, password = flower_auth.partition(":")
            report["flower_credentials"] = {
                "user": user,
                "password": password,
                "file": str(state / CREDENTIALS_FILE),
            }
        _print_json(report)
        return
    print(_table([p.row() for p in procs], ["PROCESS", "PID", "STATUS", "URL", "LOG"]))
    print(
        f"host {settings.host_name} is live in {_sanitize(settings.registry_url)}: its worker "
        f"consumes celery, tools, relics and {settings.host_queue}"
    )
    if has_flower and flower_auth:
        user, _, password = flower_auth.partition(":")
        print(
            f"Flower asks for user {user!r}, password {password!r} (generated; kept in "
            f"{state / CREDENTIALS_FILE}; ORCHESTRATOR_FLOWER_BASIC_AUTH sets your own)"
        )
    elif has_flower:
        user = settings.flower_basic_auth.partition(":")[0]
        print(f"Flower asks for user {user!r} (ORCHESTRATOR_FLOWER_BASIC_AUTH)")
    key_file = _secret_key_file(state)
    if key_file is not None:
        print(
            f"clients send secret_parameters encrypted with the workers' key: "
            f"export {KEY_SETTING}=$(cat {key_file})"
        )
    print("stop them with: orchestrator down")


def _start_missing(procs: list[_Process], root: Path, state: Path, env: dict[str, str]) -> float:
    """Start every process whose pid file names no live one; the time the worker was started
    (0 when it was already running)."""
    since = 0.0
    for proc in procs:
        pid = _read_pid(_pid_file(state, proc.name))
        if pid is not None and _alive(pid):
            proc.pid, proc.status = pid, "already running"
            continue
        if proc.name == "worker":
            since = time.time() - 1.0  # a heartbeat left by an earlier worker does not count
        _start(proc, root, state, env)
    return since


def _wait_for_worker(
    client: OrchestratorClient, worker: _Process, started: list[_Process], state: Path,
    deadline: float, wait_seconds: float, since: float,
) -> None:  # fmt: skip
    settings = client.settings

    def no_heartbeat() -> str:
        hint = "" if worker.popen else " (the running worker may serve another host name)"
        return (
            f"host {settings.host_name} did not register in Redis at "
            f"{_sanitize(settings.registry_url)} within {wait_seconds:g} s (no heartbeat)"
            f"{hint}; last lines of {worker.log}:\n"
            f"{_log_tail(worker.log)}\n{KEEPS_RUNNING}"
        )

    def registered() -> bool:
        return _host_registered(client, settings.host_name, since or None)

    _wait(registered, started, state, deadline, no_heartbeat)


def _wait_for_flower(
    flower: _Process, started: list[_Process], state: Path, deadline: float, wait_seconds: float
) -> None:
    url = flower.url or ""

    def silent() -> str:
        return (
            f"Flower did not answer at {url}/healthcheck within {wait_seconds:g} s; last "
            f"lines of {flower.log}:\n{_log_tail(flower.log)}\n{KEEPS_RUNNING}"
        )

    _wait(lambda: admin.flower_problem(url, timeout=1.0) is None, started, state, deadline, silent)


def _cmd_up(client: OrchestratorClient, args: argparse.Namespace) -> int:
    settings = client.settings
    root = repository_root()
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    _check_redis(client)
    problem = _docker_problem()
    if problem:
        print(
            f"warning: cannot reach the Docker engine ({problem}): tools and relics fail "
            f"until it runs; {SETUP_HINT}",
            file=sys.stderr,
        )
    procs = _processes(args, state)
    flower_auth = None if args.no_flower else _flower_credentials(state)
    since = _start_missing(procs, root, state, _child_env(settings, flower_auth))
    started = [p for p in procs if p.popen is not None]
    wait = UP_WAIT_SECONDS if args.wait_timeout is None else args.wait_timeout
    deadline = time.monotonic() + wait
    _wait_for_worker(client, procs[0], started, state, deadline, wait, since)
    for proc in procs:
        if proc.name == "flower":
            _wait_for_flower(proc, started, state, deadline, wait)
    _report_up(procs, settings, state, args.json, flower_auth)
    return EXIT_OK


def _wait_gone(pids: dict[str, int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    state = state_dir()
    results: list[dict[str, Any]] = []
    running: dict[str, int] = {}
    for name in STOP_ORDER:
        path = _pid_file(state, name)
        pid = _read_pid(path)
        if pid is None or not _alive(pid):
            if path.exists():
                path.unlink()
                results.append({"name": name, "pid": pid, "result": "was not running"})
            continue
        _signal(pid, signal.SIGTERM)
        running[name] = pid
    _wait_gone(running, args.grace)
    killed = {name: pid for name, pid in running.items() if _alive(pid)}
    for pid in killed.values():
        _signal(pid, signal.SIGKILL)
    _wait_gone(killed, KILL_WAIT_SECONDS)
    survivors = [f"{name} (pid {pid})" for name, pid in killed.items() if _alive(pid)]
    if survivors:  # their pid files stay, so a later `down` tries again
        raise CliError(f"could not stop {', '.join(survivors)}: check with `ps` and kill them")
    for name, pid in running.items():
        _pid_file(state, name).unlink(missing_ok=True)
        result = f"killed after {args.grace:g} s" if name in killed else "stopped"
        results.append({"name": name, "pid": pid, "result": result})
    if args.json:
        _print_json(results)
    elif not results:
        print(f"nothing to stop: no pid files in {state}")
    else:
        for item in results:
            print(f"{item['name']:<7} pid {item['pid']}: {item['result']}")
    return EXIT_OK
