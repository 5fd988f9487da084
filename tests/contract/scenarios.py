"""What containers and commands do in the contract tests, said once for each engine.

A :class:`Behaviour` is a container's main process: a busybox shell script for the real
engine and the :class:`FakeProgram` that means the same for the fake. A :class:`Command`
is the same pairing for ``exec`` (and ``RUN`` steps of a build): an argv for the real
engine and the ``on_exec`` answer the fake gives for it. Every test asserts the same
thing of both engines; only these pairs differ, side by side, so they are easy to audit.

Scripts run as the container's PID 1, which ignores every signal it has no handler for
(SIGKILL excepted): a script without ``trap`` ignores SIGTERM, as the fakes say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.core.types import ExecSpec
from orchestrator.engine.fake import FakeExec, FakeProgram

TEST_IMAGE = "orchestrator-test/busybox:latest"
#: The test image's config, as ``docker image inspect`` reports it (the fake's copy).
TEST_IMAGE_CMD = ("sh",)
TEST_IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


@dataclass(frozen=True)
class Behaviour:
    """A container's main process: a shell script (real engine) and a program (fake)."""

    name: str
    script: str
    program: FakeProgram


@dataclass(frozen=True)
class Command:
    """An exec'd command: its argv (real engine) and what the fake answers for it."""

    argv: tuple[str, ...]
    fake: Callable[[ExecSpec], FakeExec]


# -- container behaviours ------------------------------------------------------------------

EXITS_0 = Behaviour("exits-0", "exit 0", FakeProgram())
EXITS_3 = Behaviour(
    "exits-3",
    "echo out; echo err >&2; exit 3",
    FakeProgram(stdout=b"out\n", stderr=b"err\n", exit_code=3),
)
#: No handler at all: SIGTERM (and any other catchable signal) is ignored.
SLEEPS = Behaviour("sleeps", "sleep 30", FakeProgram(run_seconds=None, signal_exit_codes={}))
#: Honours SIGTERM (exits 143); ignores the other catchable signals.
TRAPS_TERM = Behaviour(
    "traps-term",
    "trap 'exit 143' TERM; while true; do sleep 0.1; done",
    FakeProgram(run_seconds=None, signal_exit_codes={"SIGTERM": 143}),
)
#: Ignores SIGTERM explicitly: only the SIGKILL after the grace ends it.
IGNORES_TERM = Behaviour(
    "ignores-term",
    "trap '' TERM; sleep 30",
    FakeProgram(ignores_sigterm=True, run_seconds=None),
)
#: Runs for half a second, then exits 4.
RUNS_BRIEFLY = Behaviour(
    "runs-briefly", "sleep 0.5; exit 4", FakeProgram(run_seconds=0.5, exit_code=4)
)
#: Three lines on stdout, then (a moment later, so the log's order is fixed) one on stderr.
WRITES_LINES = Behaviour(
    "writes-lines",
    "echo one; echo two; echo three; sleep 0.2; echo oops >&2",
    FakeProgram(stdout=b"one\ntwo\nthree\n", stderr=b"oops\n", run_seconds=0.2),
)
#: Writes a line, half a second later another, then exits.
WRITES_SLOWLY = Behaviour(
    "writes-slowly",
    "echo a; sleep 0.5; echo b",
    FakeProgram(stdout=b"a\nb\n", run_seconds=0.5),
)

#: ``cat``: writes what it reads on its standard input, exits at its end.
ECHOES_STDIN = Behaviour("echoes-stdin", "cat", FakeProgram(echoes_stdin=True))

# -- exec'd commands -------------------------------------------------------------------------

EXIT_0 = Command(("true",), lambda spec: FakeExec())
EXIT_3 = Command(("sh", "-c", "exit 3"), lambda spec: FakeExec(exit_code=3))
OUT_AND_ERR = Command(
    ("sh", "-c", "echo out; echo err >&2"),
    lambda spec: FakeExec(stdout=b"out\n", stderr=b"err\n"),
)
ECHO_GREETING = Command(
    ("sh", "-c", 'echo "$GREETING"'),
    lambda spec: FakeExec(stdout=spec.environment.get("GREETING", "").encode() + b"\n"),
)
PWD = Command(("pwd",), lambda spec: FakeExec(stdout=(spec.working_dir or "/").encode() + b"\n"))
USER_ID = Command(("id", "-u"), lambda spec: FakeExec(stdout=(spec.user or "0").encode() + b"\n"))
CAT = Command(("cat",), lambda spec: FakeExec(stdout=spec.stdin or b""))
SLOW_EXIT_4 = Command(
    ("sh", "-c", "sleep 0.5; exit 4"), lambda spec: FakeExec(exit_code=4, run_seconds=0.5)
)
#: Leaves a process behind that writes after the command ended (it dies with the container).
LEAVES_A_WRITER = Command(
    ("sh", "-c", "(sleep 2; echo late; echo late >&2) & echo done"),
    lambda spec: FakeExec(stdout=b"done\n"),
)
#: Writes what looks like the agent's end trailer (with a nonce of its own), then goes on.
FAKES_A_TRAILER = Command(
    (
        "sh",
        "-c",
        "for s in 1 2; do echo orchestrator-agent-ended 00000000000000000000000000000000 0"
        " >&$s; done; sleep 0.3; echo real; exit 5",
    ),
    lambda spec: FakeExec(
        stdout=b"orchestrator-agent-ended 00000000000000000000000000000000 0\nreal\n",
        stderr=b"orchestrator-agent-ended 00000000000000000000000000000000 0\n",
        exit_code=5,
        run_seconds=0.3,
    ),
)
SLEEPS_LONG = Command(("sleep", "30"), lambda spec: FakeExec(run_seconds=30))
#: The ``RUN`` step of the build tests (exec form, so the argv is exactly this).
BUILD_STEP = Command(("/bin/sh", "-c", "echo built > /built"), lambda spec: FakeExec())
FAILING_BUILD_STEP = Command(
    ("/bin/sh", "-c", "echo failing; exit 3"),
    lambda spec: FakeExec(stdout=b"failing\n", exit_code=3),
)
#: A ``RUN`` step that outlives a build's time limit.
SLOW_BUILD_STEP = Command(("/bin/sh", "-c", "sleep 30"), lambda spec: FakeExec(run_seconds=30))
#: A ``RUN`` step that holds 64 MiB (``tail`` keeps the last line, and this one has no
#: end): over a small memory limit it is killed, and Docker reports 137.
GREEDY_BUILD_STEP = Command(
    ("/bin/sh", "-c", "head -c 67108864 /dev/zero | tail >/dev/null"),
    lambda spec: FakeExec(exit_code=137),
)
#: A ``RUN`` step that succeeds only without a network interface besides loopback.
NO_NETWORK_BUILD_STEP = Command(
    ("/bin/sh", "-c", 'test "$(ls /sys/class/net)" = lo'), lambda spec: FakeExec()
)
#: The ``ONBUILD`` trigger of the base image in the build tests.
TRIGGER_STEP = Command(("/bin/sh", "-c", "echo triggered > /triggered"), lambda spec: FakeExec())
