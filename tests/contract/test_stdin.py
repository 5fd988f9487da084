"""A container's standard input: attached before start, written, then closed."""

from __future__ import annotations

import pytest

from tests.contract.harness import Harness, read_all
from tests.contract.scenarios import ECHOES_STDIN


@pytest.mark.parametrize(
    "data",
    # 1 MiB of text: the json-file log (how both are read back) would mangle binary
    [b"line one\nline two\n", b"0123456789abcdef\n" * 65536, b""],
    ids=["text", "text-1m", "empty"],
)
def test_stdin_is_given_to_the_process_then_closed(harness: Harness, data: bytes) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(ECHOES_STDIN, stdin_open=True)).id

    engine.attach_stdin(ref, data)
    engine.start_container(ref)

    assert engine.wait_container(ref, 30) == 0  # cat saw the end of its input
    assert read_all(engine.container_logs(ref, stderr=False)) == data


def test_without_stdin_open_the_process_reads_nothing(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(ECHOES_STDIN)).id

    engine.attach_stdin(ref, b"dropped\n")
    engine.start_container(ref)

    assert engine.wait_container(ref, 30) == 0
    assert read_all(engine.container_logs(ref, stderr=False)) == b""
