"""The pool agent's line, run by the real agent script in the local shells (no engine)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from orchestrator.core.agent import AGENT_SCRIPT, agent_line, quote

#: dash (Debian's sh), busybox's ash (the test image's sh) and bash, where installed.
SHELLS = [
    pytest.param(argv, id=argv[0])
    for argv in (["dash"], ["busybox", "sh"], ["bash", "--posix"])
    if shutil.which(argv[0])
]
HOSTILE = [
    "plain",
    "",
    "it's",
    "'",
    "''\\'",
    'say "hi"',
    "$(touch /tmp/pwned-by-agent-test)",
    "`id`",
    "${HOME}",
    "line one\nline two\n",
    "\n",
    "tab\there",
    "semi; exit 9",
    "ünïcödé ✓",
    "-n",
]


def agent(shell: list[str], data: bytes, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    done = subprocess.run(
        [*shell, "-c", AGENT_SCRIPT],
        input=data,
        capture_output=True,
        timeout=10,
        env=env or {"PATH": "/usr/bin:/bin"},
    )
    return done.returncode, done.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_values_and_arguments_arrive_byte_for_byte(shell: list[str]) -> None:
    env = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    printer = "".join(f'printf "%s|" "$V{i}"; ' for i in range(len(HOSTILE)))
    line = agent_line(["sh", "-c", printer + 'printf "%s|" "$@"', "argv0", *HOSTILE], env)

    code, out = agent(shell, line)

    assert code == 0
    assert out.decode().split("|")[:-1] == HOSTILE + HOSTILE


@pytest.mark.parametrize("shell", SHELLS)
def test_the_tool_is_execed_its_exit_code_is_the_agents(shell: list[str]) -> None:
    # exec: the shell is replaced, so nothing after the tool runs and its code is the exit's
    code, _ = agent(shell, agent_line(["sh", "-c", "exit 7"], {}))
    assert code == 7


@pytest.mark.parametrize("shell", SHELLS)
def test_what_follows_the_line_is_the_tools_standard_input(shell: list[str]) -> None:
    data = bytes(range(1, 256)) * 64 + b"\nno newline at the end"
    code, out = agent(shell, agent_line(["cat"], {}) + data)
    assert (code, out) == (0, data)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_line_cut_short_or_no_line_runs_nothing(shell: list[str], tmp_path) -> None:
    marker = tmp_path / "ran"
    line = agent_line(["touch", str(marker)], {})
    assert agent(shell, line[:-1]) == (0, b"")  # its writer died before the newline
    assert agent(shell, b"") == (0, b"")
    assert not marker.exists()
    assert agent(shell, line)[0] == 0 and marker.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_working_dir(shell: list[str], tmp_path) -> None:
    assert agent(shell, agent_line(["pwd"], {}, str(tmp_path))) == (0, f"{tmp_path}\n".encode())
    code, out = agent(shell, agent_line(["pwd"], {}, str(tmp_path / "missing")))
    assert code == 126 and out == b""


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "no command"),
        (["-x"], {}, "starts with '-'"),
        (["true"], {"A-B": "1"}, "not a valid environment variable name"),
        (["true"], {"A; id": "1"}, "not a valid environment variable name"),
        (["true"], {"A": "nul\x00"}, "NUL"),
        (["true", "nul\x00"], {}, "NUL"),
    ],
)
def test_what_the_line_cannot_carry_is_refused(argv, env, message) -> None:
    with pytest.raises(ValueError, match=message):
        agent_line(argv, env)


def test_a_quoted_word_never_holds_a_newline() -> None:
    assert "\n" not in quote("a\nb\n")
    assert agent_line(["echo", "a\nb"], {"X": "\n"}).count(b"\n") == 1
