"""The pool agent: how an idle warm-pool container is given its one tool run.

A pool container starts with :data:`AGENT_SCRIPT` as its main process and its standard
input open. The script waits for one line on its standard input and runs it with
``eval``; the worker attaches to the container and writes the line :func:`agent_line`
makes: change to the working directory, export the run's environment, run the tool (in a
subshell that ``exec``s it, so no shell built-in or variable of the agent's is reachable
from its argv), then write the **end trailer** (:class:`EndScanner`) on both standard output
and standard error and exit with the tool's exit code. What follows the line on the
standard input is the tool's own standard input when the run has one (closing it gives
the tool EOF); a run given none reads ``/dev/null``, as in a cold container.

Why a trailer: the engine takes about 30 ms after a container's main process exits to
report the exit (stream closed, ``wait`` answered: it tears the task down first). The
trailer tells the worker the tool's exit code as soon as the tool ended. After a clean
exit, the agent of a run without standard input then waits for its standard input to
close before it exits: the container's teardown (about as much engine CPU as the run) is
left to whoever ends it (the pool removes it once the result was sent) instead of landing
on the run's last milliseconds. It is written on both streams because the engine
copies them apart: only once each stream has brought its trailer has all of the tool's
output on it arrived. Each run's trailer carries a fresh random nonce that only the agent
shell holds (never exported, unset before the tool is ``exec``ed), so the tool's own output
does not end the run by chance or by echoing a fixed string.

Compared with ``docker exec`` (create, start, inspect: three engine calls and a new
``runc exec`` process), a pooled run then costs one attach and the trailer.

Everything the line carries is quoted for the shell: each value in single quotes, a
single quote as ``'\\''``, and a newline (which would end the line) as ``"$_oa_nl"``, a
variable the script sets to a newline (the agent's own variables start with ``_oa_``,
which no environment variable of a run may). Only POSIX ``sh`` built-ins are used (``trap``,
``read``, ``eval``, ``cd``, ``export``, ``set``, ``unset``, ``exec``, ``echo``), so any image
with a ``sh`` serves.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence

from orchestrator.core.types import ExecSpec
from orchestrator.errors import DockerError

__all__ = [
    "AGENT_SCRIPT",
    "AGENT_ENTRYPOINT",
    "AGENT_PROTOCOL",
    "AGENT_TOOK",
    "AGENT_ENDED",
    "EndScanner",
    "agent_line",
    "new_nonce",
    "agent_input",
    "quote",
]

#: Changes whenever the line's format does: part of a pool's key, so a worker never gives
#: a line to a pool container made by a worker that expects another one.
AGENT_PROTOCOL = "agent-2"

#: What the agent writes on its standard error when it took its line, before it runs it:
#: an engine reads it first (and strips it), and only then knows the command was taken. A
#: container that died while idle, or that is no agent, never writes it.
AGENT_TOOK = b"orchestrator-agent-took-its-command\n"

#: The start of the end trailer the agent writes on each stream once the tool ended:
#: ``AGENT_ENDED``, the run's nonce, a space, the exit code (decimal) and a newline.
AGENT_ENDED = b"orchestrator-agent-ended "
#: Digits of an exit code (0 to 255).
_CODE_DIGITS = 3
_NONCE = re.compile(r"^[0-9a-f]{16,64}$")

#: Waits for one line on the standard input and runs it; exits 0 on SIGTERM or an empty
#: standard input (a container is PID 1 and would otherwise ignore SIGTERM). A line cut
#: short (no newline: its writer died) is never run.
AGENT_SCRIPT = (
    "trap 'exit 0' TERM INT\n"
    "_oa_nl='\n'\n"
    "IFS= read -r _oa_line || exit 0\n"
    "trap - TERM INT\n"
    f"echo {AGENT_TOOK.decode().strip()} >&2\n"
    'eval "$_oa_line"\n'
)

#: The entrypoint of a pool container.
AGENT_ENTRYPOINT = ("sh", "-c", AGENT_SCRIPT)

#: The agent's own shell variables start with this: no environment variable may.
_RESERVED = "_oa_"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value: str) -> str:
    """``value`` as one shell word that holds no newline (see the module's docstring)."""
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$_oa_nl\"'") + "'"


def new_nonce() -> str:
    """A fresh random nonce for one run's end trailer."""
    return secrets.token_hex(16)


def agent_line(
    argv: Sequence[str],
    environment: Mapping[str, str],
    working_dir: str | None = None,
    *,
    nonce: str,
    stdin: bool = False,
) -> bytes:
    """The line that makes the agent run ``argv`` with ``environment`` in ``working_dir``,
    then write the end trailer with ``nonce`` (see :class:`EndScanner`).

    With ``stdin`` the tool reads the agent's standard input (what follows the line) and
    the agent exits right after the trailers. Without, the tool reads ``/dev/null`` and,
    after a clean exit, the agent exits only once its standard input closes.

    Raises:
        ValueError: no command, a command starting with ``-``, a variable name that is
            not a shell name, a NUL byte (which no environment or argument can hold), or a
            nonce that is not 16 to 64 lowercase hex digits.
    """
    if not argv:
        raise ValueError("no command to run (the request has none and the image neither)")
    if not _NONCE.fullmatch(nonce):
        raise ValueError("the nonce must be 16 to 64 lowercase hex digits")
    words: list[str] = [f"_oa_k={nonce};"]
    if working_dir:
        words.append(f"cd {quote(working_dir)} || exit 126;")
    for name, value in environment.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if name.startswith(_RESERVED):
            raise ValueError(f"{name!r}: names starting with {_RESERVED!r} are the agent's")
        words.append(f"export {name}={quote(value)};")
    if argv[0].startswith("-"):  # an option to exec, and dash's exec takes no "--"
        raise ValueError(f"command {argv[0]!r} starts with '-': run it with docker exec")
    words.append("set -- " + " ".join(quote(arg) for arg in argv) + ";")
    # The subshell forgets the line and the nonce, and exec runs a program of the image
    # (never a built-in or a function): the tool cannot reach either.
    redirect = "" if stdin else " </dev/null"
    words.append(f'(unset _oa_line _oa_k; exec "$@"){redirect};')
    ended = AGENT_ENDED.decode()
    trailer = f'"{ended}$_oa_k $_oa_c"'
    words.append(f"_oa_c=$?; echo {trailer}; echo {trailer} >&2;")
    # A failed exit ends the container at once: the engine waits for that (an OOM kill is
    # on record only then). A clean one waits for the end of the standard input.
    words.append('[ "$_oa_c" != 0 ] || IFS= read -r _oa_line; exit "$_oa_c"')
    line = " ".join(words)
    if "\x00" in line:
        raise ValueError("a value contains a NUL byte")
    return line.encode() + b"\n"


def agent_input(ref: str, spec: ExecSpec, nonce: str) -> bytes:
    """The line that gives container ``ref``'s agent the command of ``spec`` (its stdin
    not included), ending with a trailer that carries ``nonce``: what every engine's
    ``run_attached`` checks before anything is sent.

    Raises:
        DockerError: a user is asked for (the agent runs as its container's user), or the
            line cannot carry the command (see :func:`agent_line`); nothing was run.
    """
    if spec.user:
        raise DockerError(f"cannot give {ref} its command: a pool agent runs it as its user")
    try:
        return agent_line(
            spec.argv, spec.environment, spec.working_dir, nonce=nonce, stdin=bool(spec.stdin)
        )
    except ValueError as exc:
        raise DockerError(f"cannot give {ref} its command: {exc}") from exc


class EndScanner:
    """Finds a run's end trailer in one of its output streams, as the chunks arrive.

    :meth:`feed` returns the bytes that are the tool's output: everything before the
    trailer. Bytes that could be the start of the trailer are held until the next chunk
    tells (at most the trailer's length); :meth:`flush` gives them back when the stream
    ended without one. Once the trailer was seen, :attr:`exit_code` holds its code and
    whatever follows it is dropped (a process the tool left behind, killed a moment later
    with the container). A trailer that does not carry this run's nonce is plain output.
    """

    def __init__(self, nonce: str) -> None:
        self._head = AGENT_ENDED + nonce.encode() + b" "
        self._held = b""
        #: The tool's exit code, once the trailer was seen.
        self.exit_code: int | None = None

    @property
    def ended(self) -> bool:
        """Whether the trailer was seen."""
        return self.exit_code is not None

    def feed(self, data: bytes) -> bytes:
        """The tool's output in ``data`` (with what was held before it)."""
        if self.ended:
            return b""
        buffer = self._held + data
        head = self._head
        searched = 0
        while (at := buffer.find(head, searched)) >= 0:
            tail = buffer[at + len(head) : at + len(head) + _CODE_DIGITS + 1]
            newline = tail.find(b"\n")
            if newline < 0 and len(tail) <= _CODE_DIGITS:
                self._held = buffer[at:]  # the code has not all arrived yet
                return buffer[:at]
            digits = tail[:newline] if newline > 0 else b""
            if digits.isdigit() and int(digits) <= 255:
                self.exit_code = int(digits)
                self._held = b""
                return buffer[:at]
            searched = at + 1  # not a trailer after all: plain output
        keep = self._partial_head(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else b""
        return buffer[: len(buffer) - keep]

    def flush(self) -> bytes:
        """What was held back (the stream ended without a trailer)."""
        held, self._held = self._held, b""
        return held

    def _partial_head(self, buffer: bytes) -> int:
        """The length of the longest end of ``buffer`` that begins the trailer's head."""
        for size in range(min(len(buffer), len(self._head) - 1), 0, -1):
            if self._head.startswith(buffer[-size:]):
                return size
        return 0
