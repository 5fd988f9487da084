"""Behaviour of live output: LiveLog publishing into a capped Redis stream, read_live and
follow_live on the client side, and LogFollower reading a container's two streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from orchestrator.core.redaction import redact_bytes
from orchestrator.core.types import Chunk, ContainerSpec, Stream
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import DockerUnavailable
from orchestrator.state import keys
from orchestrator.state.logs import (
    CHUNK_BYTES,
    EOF_FIELD,
    LiveLog,
    follow_live,
    read_live,
)
from orchestrator.worker.follow import LogFollower

TRUNCATED_TEXT = "\n[... live output truncated; the result keeps head and tail ...]\n"


def entries(redis, execution_id: str = "e1") -> list[dict[bytes, bytes]]:
    return [fields for _, fields in redis.xrange(keys.logs(execution_id))]


def published(redis, stream: str, execution_id: str = "e1") -> bytes:
    return b"".join(
        e[b"data"] for e in entries(redis, execution_id) if e[b"stream"] == stream.encode()
    )


def started(engine: FakeEngine, **program: Any) -> str:
    """A started container running ``program``; returns its name."""
    engine.add_image("tool:1", FakeProgram(**program))
    engine.create_container(ContainerSpec(name="orch-tool-e1", image="tool:1", labels={}))
    engine.start_container("orch-tool-e1")
    return "orch-tool-e1"


# -- LiveLog -------------------------------------------------------------------------------


def test_chunks_under_the_budget_are_published_in_order_with_their_stream_name(redis):
    live = LiveLog(redis, "e1", budget_bytes=1024, ttl_seconds=60)

    live.append("stdout", b"hello ")
    live.append("stderr", b"oops\n")
    live.append("stdout", b"world\n")

    assert [(e[b"stream"], e[b"data"]) for e in entries(redis)] == [
        (b"stdout", b"hello "),
        (b"stderr", b"oops\n"),
        (b"stdout", b"world\n"),
    ]


def test_a_chunk_larger_than_the_entry_size_is_split_into_several_entries(redis):
    live = LiveLog(redis, "e1", budget_bytes=1_000_000, ttl_seconds=60)
    data = bytes(range(256)) * 80  # 20480 bytes

    live.append("stdout", data)

    sizes = [len(e[b"data"]) for e in entries(redis)]
    assert sizes == [CHUNK_BYTES, CHUNK_BYTES, len(data) - 2 * CHUNK_BYTES]
    assert published(redis, "stdout") == data


def test_publishing_stops_at_the_budget_with_one_truncated_marker(redis):
    live = LiveLog(redis, "e1", budget_bytes=10, ttl_seconds=60)

    live.append("stdout", b"12345678")
    live.append("stdout", b"abcdefgh")
    live.append("stdout", b"more and more")

    assert published(redis, "stdout") == b"12345678ab"
    markers = [e for e in entries(redis) if e.get(b"truncated")]
    assert markers == [{b"stream": b"stdout", b"data": b"", b"truncated": b"1"}]
    assert len(entries(redis)) == 3


def test_each_stream_has_its_own_budget(redis):
    live = LiveLog(redis, "e1", budget_bytes=10, ttl_seconds=60)

    live.append("stdout", b"x" * 50)
    live.append("stderr", b"err")

    assert published(redis, "stdout") == b"x" * 10
    assert published(redis, "stderr") == b"err"


def test_secret_values_are_replaced_before_publishing(redis):
    live = LiveLog(redis, "e1", 1024, 60, secrets=["hunter22", ""])

    live.append("stdout", b"password=hunter22; again hunter22\n")
    held = published(redis, "stdout")
    live.close()

    # The tail is held back: it may start a secret form (the longest, hex, is 16 bytes).
    assert held == b"password="
    assert published(redis, "stdout") == b"password=***; again ***\n"


def test_encoded_forms_of_a_secret_are_replaced_in_live_output_too(redis):
    live = LiveLog(redis, "e1", 1024, 60, secrets=["hunter22"])

    live.append("stdout", b"b64=aHVudGVy")  # base64 of the secret, split across chunks
    live.append("stdout", b'MjI= hex=68756e7465723232 json="hunter22"\n')
    live.close()

    assert published(redis, "stdout") == b'b64=*** hex=*** json="***"\n'


def test_redact_bytes_replaces_every_secret_and_keeps_the_rest():
    assert redact_bytes(b"a-s1-b-s2-s1", ["s1", "s2"]) == b"a-***-b-***-***"
    assert redact_bytes(b"nothing here", []) == b"nothing here"


def test_close_marks_the_end_and_lets_the_stream_expire(redis):
    live = LiveLog(redis, "e1", 1024, ttl_seconds=60)
    live.append("stdout", b"x")

    live.close()

    assert entries(redis)[-1][EOF_FIELD.encode()] == b"1"
    assert 0 < redis.ttl(keys.logs("e1")) <= 60


def test_a_redis_failure_while_publishing_is_swallowed():
    class DownRedis:
        def xadd(self, *args, **kwargs):
            raise ConnectionError("Redis is restarting")

        def expire(self, *args, **kwargs):
            raise ConnectionError("Redis is restarting")

    live = LiveLog(DownRedis(), "e1", 1024, 60)

    live.append("stdout", b"x")
    live.close()  # no exception: live output is best effort


def test_a_secret_split_across_two_chunks_is_not_published(redis):
    live = LiveLog(redis, "e1", 1024, 60, secrets=["hunter22"])

    live.append("stdout", b"password=hun")
    live.append("stdout", b"ter22\n")

    assert b"hunter22" not in published(redis, "stdout")


# -- read_live / follow_live -------------------------------------------------------------


def test_read_live_returns_stdout_and_stderr_apart(redis):
    live = LiveLog(redis, "e1", budget_bytes=6, ttl_seconds=60)
    live.append("stdout", b"out 1 ")
    live.append("stderr", b"err 1\n")
    live.append("stdout", b"dropped")
    live.close()

    assert read_live(redis, "e1") == {"stdout": "out 1 ", "stderr": "err 1\n"}


def test_read_live_of_an_unknown_execution_is_empty(redis):
    assert read_live(redis, "nobody") == {"stdout": "", "stderr": ""}


def test_read_live_decodes_invalid_utf8_with_replacement_characters(redis):
    LiveLog(redis, "e1", 1024, 60).append("stdout", b"ok \xff\n")

    assert read_live(redis, "e1")["stdout"] == "ok \ufffd\n"


def test_follow_live_yields_chunks_in_order_until_the_end_marker(redis):
    live = LiveLog(redis, "e1", 1024, 60)

    def tool() -> None:
        for i in range(5):
            live.append("stdout" if i % 2 == 0 else "stderr", f"line {i}\n".encode())
            time.sleep(0.02)
        live.close()
        live.append("stdout", b"after the end\n")

    publisher = threading.Thread(target=tool, daemon=True)
    publisher.start()

    seen = list(follow_live(redis, "e1", block_ms=100, idle_rounds=50))

    publisher.join(2)
    assert seen == [
        ("stdout", "line 0\n"),
        ("stderr", "line 1\n"),
        ("stdout", "line 2\n"),
        ("stderr", "line 3\n"),
        ("stdout", "line 4\n"),
    ]


def test_follow_live_reports_where_live_output_was_truncated(redis):
    live = LiveLog(redis, "e1", budget_bytes=4, ttl_seconds=60)
    live.append("stderr", b"abcdef")
    live.close()

    assert list(follow_live(redis, "e1", block_ms=50, idle_rounds=2)) == [
        ("stderr", "abcd"),
        ("stderr", TRUNCATED_TEXT),
    ]


def test_follow_live_gives_up_after_the_idle_rounds(redis):
    LiveLog(redis, "e1", 1024, 60).append("stdout", b"only line\n")
    begin = time.monotonic()

    seen = list(follow_live(redis, "e1", block_ms=20, idle_rounds=3))

    assert seen == [("stdout", "only line\n")]
    assert time.monotonic() - begin < 1.0


def test_follow_live_keeps_a_multibyte_character_split_between_entries(redis):
    live = LiveLog(redis, "e1", 1_000_000, 60)
    live.append("stdout", b"a" * (CHUNK_BYTES - 1) + "é\n".encode())
    live.close()

    text = "".join(chunk for _, chunk in follow_live(redis, "e1", block_ms=20, idle_rounds=2))

    assert text == "a" * (CHUNK_BYTES - 1) + "é\n"


# -- LogFollower ----------------------------------------------------------------------------


def test_the_follower_collects_both_streams_apart_and_reports_complete(redis, engine):
    name = started(engine, stdout=b"out 1\nout 2\n", stderr=b"err 1\n", run_seconds=0.05)
    live = LiveLog(redis, "e1", 1024, 60)

    follower = LogFollower(engine, name, cap_bytes=1024, live=live).start()

    assert follower.finish(timeout_seconds=2) is True
    assert follower.stdout.text() == "out 1\nout 2\n"
    assert follower.stderr.text() == "err 1\n"
    assert read_live(redis, "e1") == {"stdout": "out 1\nout 2\n", "stderr": "err 1\n"}
    assert entries(redis)[-1].get(EOF_FIELD.encode()) == b"1"
    assert engine.called("follow_output") == [(name,)]  # one stream, both followed
    assert engine.called("container_logs") == []


def test_the_follower_keeps_head_and_tail_of_output_above_the_cap(engine):
    name = started(engine, stdout=b"H" * 1000 + b"M" * 3000 + b"T" * 1000, run_seconds=0.02)

    follower = LogFollower(engine, name, cap_bytes=1024).start()

    assert follower.finish(timeout_seconds=2) is True
    assert follower.stdout.truncated is True
    assert follower.stdout.total_bytes == 5000
    text = follower.stdout.text()
    assert text.startswith("H" * 512)
    assert text.endswith("T" * 512)
    assert "3976 bytes truncated" in text
    assert follower.stderr.text() == ""


class BrokenStream:
    """A follow stream whose connection breaks after the first line of output."""

    def __init__(self, inner: Stream[Chunk]) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Chunk]:
        for number, chunk in self.inner:
            yield number, chunk.splitlines(keepends=True)[0]
            raise DockerUnavailable("read logs: Connection broken: IncompleteRead")

    def close(self) -> None:
        self.inner.close()


def test_a_broken_follow_stream_reports_the_output_incomplete(engine, monkeypatch):
    name = started(engine, stdout=b"a\nb\nc\n", run_seconds=0.02)
    follow = engine.follow_output
    monkeypatch.setattr(engine, "follow_output", lambda *a: BrokenStream(follow(*a)))

    follower = LogFollower(engine, name, cap_bytes=1024).start()

    assert follower.finish(timeout_seconds=2) is False
    assert follower.stdout.text() == "a\n"


def test_a_follow_that_cannot_start_reports_the_output_incomplete(engine):
    name = started(engine, stdout=b"a\n", run_seconds=0.02)
    engine.fail_next("follow_output", DockerUnavailable("read logs: engine unreachable"))

    follower = LogFollower(engine, name, cap_bytes=1024).start()

    assert follower.finish(timeout_seconds=2) is False


def test_finish_gives_up_on_a_container_that_keeps_running_and_closes_its_streams(engine):
    name = started(engine, stdout=b"tick\n", run_seconds=None)
    follower = LogFollower(engine, name, cap_bytes=1024).start()
    begin = time.monotonic()

    assert follower.finish(timeout_seconds=0.1) is False

    assert time.monotonic() - begin < 1.0
    assert follower.stdout.text() == "tick\n"
    follower._thread.join(1)
    assert not follower._thread.is_alive()  # closing the stream ended the reader
