"""The pool agent's line, run by the real agent script in the local shells (no engine)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from orchestrator.core.agent import AGENT_ENDED, AGENT_SCRIPT, EndScanner, agent_line, quote

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


NONCE = "0123456789abcdef" * 2


def make_line(
    argv: list[str], env: dict[str, str], working_dir: str | None = None, *, stdin: bool = False
) -> bytes:
    return agent_line(argv, env, working_dir, nonce=NONCE, stdin=stdin)


def agent(shell: list[str], data: bytes, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Run the agent script on ``data``; returns its exit code and the tool's stdout. When
    the agent wrote its trailers, each stream's says the exit code and ends it."""
    done = subprocess.run(
        [*shell, "-c", AGENT_SCRIPT],
        input=data,
        capture_output=True,
        timeout=10,
        env=env or {"PATH": "/usr/bin:/bin"},
    )
    out, err = EndScanner(NONCE), EndScanner(NONCE)
    stdout = out.feed(done.stdout)
    err.feed(done.stderr)
    if out.ended or err.ended:
        assert out.exit_code == err.exit_code == done.returncode
    else:
        stdout += out.flush()
    return done.returncode, stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_values_and_arguments_arrive_byte_for_byte(shell: list[str]) -> None:
    env = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    printer = "".join(f'printf "%s|" "$V{i}"; ' for i in range(len(HOSTILE)))
    given = make_line(["sh", "-c", printer + 'printf "%s|" "$@"', "argv0", *HOSTILE], env)

    code, out = agent(shell, given)

    assert code == 0
    assert out.decode().split("|")[:-1] == HOSTILE + HOSTILE


@pytest.mark.parametrize("shell", SHELLS)
def test_the_tools_exit_code_is_the_trailers_and_the_agents(shell: list[str]) -> None:
    code, _ = agent(shell, make_line(["sh", "-c", "exit 7"], {}))  # agent() checks the trailers
    assert code == 7


@pytest.mark.parametrize("shell", SHELLS)
def test_what_follows_the_line_is_the_tools_standard_input(shell: list[str]) -> None:
    data = bytes(range(1, 256)) * 64 + b"\nno newline at the end"
    code, out = agent(shell, make_line(["cat"], {}, stdin=True) + data)
    assert (code, out) == (0, data)
    # a run given no standard input reads /dev/null, as in a cold container
    code, out = agent(shell, make_line(["cat"], {}) + data)
    assert (code, out) == (0, b"")


def started_agent(shell: list[str], line: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """An agent given ``line`` and its standard input left open; returns it and the tool's
    exit code once its stdout trailer came."""
    process = subprocess.Popen(
        [*shell, "-c", AGENT_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line)
    process.stdin.flush()
    scanner = EndScanner(NONCE)
    while not scanner.ended:
        chunk = process.stdout.readline()
        assert chunk, "the agent ended without its trailer"
        scanner.feed(chunk)
    assert scanner.exit_code is not None
    return process, scanner.exit_code


@pytest.mark.parametrize("shell", SHELLS)
def test_after_a_clean_run_the_agent_ends_with_its_standard_input(shell: list[str]) -> None:
    process, code = started_agent(shell, make_line(["true"], {}))
    try:
        assert code == 0
        with pytest.raises(subprocess.TimeoutExpired):  # its container is left to the pool
            process.wait(0.3)
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("shell", SHELLS)
def test_after_a_failed_run_the_agent_ends_at_once(shell: list[str]) -> None:
    # the engine waits for the container's own end then (an OOM kill is on record only then)
    process, code = started_agent(shell, make_line(["sh", "-c", "exit 3"], {}))
    try:
        assert code == 3
        assert process.wait(5) == 3
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_line_cut_short_or_no_line_runs_nothing(shell: list[str], tmp_path) -> None:
    marker = tmp_path / "ran"
    line = make_line(["touch", str(marker)], {})
    assert agent(shell, line[:-1]) == (0, b"")  # its writer died before the newline
    assert agent(shell, b"") == (0, b"")
    assert not marker.exists()
    assert agent(shell, line)[0] == 0 and marker.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_working_dir(shell: list[str], tmp_path) -> None:
    assert agent(shell, make_line(["pwd"], {}, str(tmp_path))) == (0, f"{tmp_path}\n".encode())
    code, out = agent(shell, make_line(["pwd"], {}, str(tmp_path / "missing")))
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
        make_line(argv, env)


def test_a_quoted_word_never_holds_a_newline() -> None:
    assert "\n" not in quote("a\nb\n")
    assert make_line(["echo", "a\nb"], {"X": "\n"}).count(b"\n") == 1


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    "argv",
    [
        ["eval", 'echo "$_oa_k $_oa_line"'],  # a built-in would run in the agent's shell
        ["sh", "-c", 'echo "$_oa_k $_oa_line"; cat /proc/self/environ'],
    ],
    ids=["builtin", "child"],
)
def test_the_tool_cannot_see_the_nonce(shell: list[str], argv: list[str]) -> None:
    code, out = agent(shell, make_line(argv, {"A": "1"}))
    assert NONCE.encode() not in out
    assert code == (127 if argv[0] == "eval" else 0)  # exec runs programs, never built-ins


@pytest.mark.parametrize("shell", SHELLS)
def test_a_trailer_the_tool_writes_without_the_nonce_is_its_output(shell: list[str]) -> None:
    fake = AGENT_ENDED.decode() + "feedfacefeedfacefeedfacefeedface 0"
    code, out = agent(shell, make_line(["sh", "-c", f"echo {fake}; echo more; exit 3"], {}))
    assert (code, out) == (3, f"{fake}\nmore\n".encode())


@pytest.mark.parametrize("name", ["_oa_k", "_oa_line", "_oa_anything"])
def test_the_agents_own_variable_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="the agent's"):
        make_line(["true"], {name: "x"})


@pytest.mark.parametrize("nonce", ["", "abc", "0123456789ABCDEF", "0123456789abcdef; id"])
def test_a_nonce_that_is_not_hex_is_refused(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        agent_line(["true"], {}, nonce=nonce)


TRAILER = AGENT_ENDED + NONCE.encode() + b" 42\n"


@pytest.mark.parametrize("cut", range(1, len(TRAILER) + 8, 3))
def test_the_scanner_finds_a_trailer_cut_anywhere(cut: int) -> None:
    data = b"tool output " + TRAILER + b"left behind"
    scanner = EndScanner(NONCE)
    out = scanner.feed(data[:cut]) + scanner.feed(data[cut:])
    assert (out, scanner.exit_code) == (b"tool output ", 42)
    assert scanner.feed(b"more") == b"" and scanner.flush() == b""


def test_the_scanner_holds_only_what_may_start_a_trailer() -> None:
    scanner = EndScanner(NONCE)
    assert scanner.feed(b"abc" + AGENT_ENDED[:5]) == b"abc"
    assert scanner.feed(b"X") == AGENT_ENDED[:5] + b"X"  # not the trailer after all
    assert scanner.feed(b"tail " + AGENT_ENDED) == b"tail "
    assert not scanner.ended and scanner.flush() == AGENT_ENDED


@pytest.mark.parametrize(
    "looks_like",
    [
        AGENT_ENDED + b"ffff" * 8 + b" 0\n",  # another nonce
        AGENT_ENDED + NONCE.encode() + b" 256\n",  # no exit code
        AGENT_ENDED + NONCE.encode() + b" 1234\n",
        AGENT_ENDED + NONCE.encode() + b" x\n",
        AGENT_ENDED + NONCE.encode() + b" \n",
    ],
)
def test_what_only_looks_like_a_trailer_is_output(looks_like: bytes) -> None:
    scanner = EndScanner(NONCE)
    out = b"".join(scanner.feed(bytes([byte])) for byte in looks_like + b"next")
    assert out + scanner.flush() == looks_like + b"next"
    assert not scanner.ended


def test_the_first_real_trailer_after_a_false_one_ends_the_stream() -> None:
    scanner = EndScanner(NONCE)
    false = AGENT_ENDED + NONCE.encode() + b" x\n"
    assert scanner.feed(false + TRAILER + b"after") == false
    assert scanner.exit_code == 42
