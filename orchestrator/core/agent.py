"""The pool agent: how an idle warm-pool container is given its one tool run.

A pool container starts with :data:`AGENT_SCRIPT` as its main process and its standard
input open. The script waits for one line on its standard input and runs it with
``eval``; the worker attaches to the container and writes the line :func:`agent_line`
makes: change to the working directory, export the run's environment, then ``exec`` the
tool, which so becomes the container's main process, as in a cold run. What follows the
line on the standard input is the tool's own standard input; closing it gives the tool EOF.

Compared with ``docker exec`` (create, start, inspect: three engine calls and a new
``runc exec`` process), a pooled run then costs one attach and one wait, and the
container's exit code is the tool's.

Everything the line carries is quoted for the shell: each value in single quotes, a
single quote as ``'\\''``, and a newline (which would end the line) as ``"$nl"``, a
variable the script sets to a newline. Only POSIX ``sh`` built-ins are used (``trap``,
``read``, ``eval``, ``cd``, ``export``, ``exec``), so any image with a ``sh`` serves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from orchestrator.core.types import ExecSpec
from orchestrator.errors import DockerError

__all__ = [
    "AGENT_SCRIPT",
    "AGENT_ENTRYPOINT",
    "AGENT_PROTOCOL",
    "AGENT_TOOK",
    "agent_line",
    "agent_input",
    "quote",
]

#: Changes whenever the line's format does: part of a pool's key, so a worker never gives
#: a line to a pool container made by a worker that expects another one.
AGENT_PROTOCOL = "agent-1"

#: What the agent writes on its standard error when it took its line, before it runs it:
#: an engine reads it first (and strips it), and only then knows the command was taken. A
#: container that died while idle, or that is no agent, never writes it.
AGENT_TOOK = b"orchestrator-agent-took-its-command\n"

#: Waits for one line on the standard input and runs it; exits 0 on SIGTERM or an empty
#: standard input (a container is PID 1 and would otherwise ignore SIGTERM). A line cut
#: short (no newline: its writer died) is never run.
AGENT_SCRIPT = (
    "trap 'exit 0' TERM INT\n"
    "nl='\n'\n"
    "IFS= read -r line || exit 0\n"
    "trap - TERM INT\n"
    f"echo {AGENT_TOOK.decode().strip()} >&2\n"
    'eval "$line"\n'
)

#: The entrypoint of a pool container.
AGENT_ENTRYPOINT = ("sh", "-c", AGENT_SCRIPT)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value: str) -> str:
    """``value`` as one shell word that holds no newline (see the module's docstring)."""
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$nl\"'") + "'"


def agent_line(
    argv: Sequence[str], environment: Mapping[str, str], working_dir: str | None = None
) -> bytes:
    """The line that makes the agent run ``argv`` with ``environment`` in ``working_dir``.

    Raises:
        ValueError: no command, a command starting with ``-``, a variable name that is
            not a shell name, or a NUL byte (which no environment or argument can hold).
    """
    if not argv:
        raise ValueError("no command to run (the request has none and the image neither)")
    words: list[str] = []
    if working_dir:
        words.append(f"cd {quote(working_dir)} || exit 126;")
    for name, value in environment.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        words.append(f"export {name}={quote(value)};")
    if argv[0].startswith("-"):  # an option to exec, and dash's exec takes no "--"
        raise ValueError(f"command {argv[0]!r} starts with '-': run it with docker exec")
    words.append("exec " + " ".join(quote(arg) for arg in argv))
    line = " ".join(words)
    if "\x00" in line:
        raise ValueError("a value contains a NUL byte")
    return line.encode() + b"\n"


def agent_input(ref: str, spec: ExecSpec) -> bytes:
    """The line that gives container ``ref``'s agent the command of ``spec`` (its stdin
    not included): what every engine's ``run_attached`` checks before anything is sent.

    Raises:
        DockerError: a user is asked for (the agent runs as its container's user), or the
            line cannot carry the command (see :func:`agent_line`); nothing was run.
    """
    if spec.user:
        raise DockerError(f"cannot give {ref} its command: a pool agent runs it as its user")
    try:
        return agent_line(spec.argv, spec.environment, spec.working_dir)
    except ValueError as exc:
        raise DockerError(f"cannot give {ref} its command: {exc}") from exc
