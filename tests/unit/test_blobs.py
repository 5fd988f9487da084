"""File bytes beside the messages, on fakeredis: chunked blobs, blobs written after their
message, and the stream a ``get_files`` reply fills while the client reads it."""

from __future__ import annotations

import threading

import pytest

from orchestrator.client import files as file_calls
from orchestrator.errors import InvalidRequest, NotFound, OrchestratorError
from orchestrator.models import FileContent, FilesRead
from orchestrator.state import blob_stream, blobs, keys
from orchestrator.state.blob_stream import StreamReader, StreamWriter

MIB = 1 << 20
#: 2.5 MiB, every byte value: three chunks, the last one short
DATA = bytes(range(256)) * (10 * 1024)


def test_a_blob_round_trips_byte_for_byte_in_chunks_and_is_gone_once_taken(redis) -> None:
    ref = blobs.put(redis, DATA)

    assert blobs.is_blob_ref(ref)
    assert redis.llen(keys.PREFIX + ref) == 3
    assert 0 < redis.ttl(keys.PREFIX + ref) <= blobs.BLOB_TTL_SECONDS
    assert blobs.take(redis, ref) == DATA
    assert redis.exists(keys.PREFIX + ref) == 0
    with pytest.raises(NotFound, match="expired or was used already"):
        blobs.take(redis, ref)


def test_a_blob_given_in_pieces_is_the_same_blob_in_full_chunks(redis) -> None:
    view = memoryview(DATA)
    small = [view[i : i + 32768] for i in range(0, 2_000_000, 32768)]  # as the engine sends
    pieces = [*small, view[len(small) * 32768 : 2_100_000], view[2_100_000:]]

    ref = blobs.put(redis, pieces)

    assert [len(c) for c in redis.lrange(keys.PREFIX + ref, 0, -1)] == [MIB, MIB, MIB // 2]
    assert blobs.take(redis, ref) == DATA
    assert blobs.take(redis, blobs.put(redis, b"")) == b""


def test_a_reader_stops_past_its_cap_and_deletes_the_blob(redis) -> None:
    ref = blobs.put(redis, DATA)

    with pytest.raises(blobs.BlobTooLarge, match=f"more than {MIB} bytes"):
        blobs.take_chunks(redis, ref, max_bytes=MIB)
    assert redis.exists(keys.PREFIX + ref) == 0


@pytest.mark.parametrize("ref", ["e1:0", "blob:../../orch:lease:x", "orch:lease:x", "blob:ABC"])
def test_only_blob_refs_name_a_key(redis, ref) -> None:
    redis.set("orch:lease:x", b"not yours")
    with pytest.raises(InvalidRequest, match="not a file reference"):
        blobs.take(redis, ref)
    assert redis.get("orch:lease:x") == b"not yours"


def test_a_string_blob_of_an_older_client_is_still_taken(redis) -> None:
    ref = blobs.new_ref()
    redis.set(keys.PREFIX + ref, DATA, ex=60)

    assert blobs.take(redis, ref) == DATA
    assert redis.exists(keys.PREFIX + ref) == 0


def test_a_run_reads_its_blob_without_taking_it_until_discarded(redis) -> None:
    ref = blobs.put(redis, DATA)

    assert b"".join(blobs.read_chunks(redis, ref)) == DATA
    assert b"".join(blobs.read_chunks(redis, ref)) == DATA  # a retried run reads it again
    with pytest.raises(blobs.BlobTooLarge):
        blobs.read_chunks(redis, ref, max_bytes=MIB)
    blobs.discard(redis, [ref, None, "not-a-ref"])
    with pytest.raises(NotFound):
        blobs.read_chunks(redis, ref)


def test_a_blob_written_after_its_message_is_read_as_it_lands(redis) -> None:
    later = blobs.Deferred(redis)
    ref = later.stash(DATA)
    got: list[bytes] = []
    reader = threading.Thread(
        target=lambda: got.extend(blobs.take_chunks(redis, ref, size=len(DATA)))
    )
    reader.start()  # the worker has the message before the bytes

    later.push()
    reader.join(timeout=10)

    assert b"".join(got) == DATA
    assert redis.exists(keys.PREFIX + ref) == 0


def test_a_blob_whose_writer_stopped_fails_clearly_and_is_deleted(redis, monkeypatch) -> None:
    monkeypatch.setattr(blobs, "BLOB_WAIT_SECONDS", 0.3)
    ref = blobs.new_ref()
    redis.rpush(keys.PREFIX + ref, DATA[:MIB])  # one chunk of three, then nothing

    with pytest.raises(NotFound, match=f"{MIB} of its {len(DATA)} bytes came, then none"):
        blobs.take_chunks(redis, ref, size=len(DATA))
    assert redis.exists(keys.PREFIX + ref) == 0
    with pytest.raises(NotFound, match="expired or was used already"):
        blobs.take_chunks(redis, blobs.new_ref(), size=10)  # never written at all


def test_a_blob_longer_than_its_size_stops_there_and_is_deleted(redis) -> None:
    ref = blobs.put(redis, DATA)

    chunks = blobs.take_chunks(redis, ref, size=10)

    assert sum(len(c) for c in chunks) > 10  # the caller refuses it (its size is wrong)
    assert redis.exists(keys.PREFIX + ref) == 0


def test_a_discarded_deferred_blob_leaves_nothing(redis) -> None:
    later = blobs.Deferred(redis)
    refs = [later.stash(DATA), later.stash(b"x" * 100)]
    later.push()
    redis.delete(keys.PREFIX + refs[0])  # a refused call took one already

    later.discard()

    assert [k for k in redis.scan_iter("orch:blob:*")] == []


# -- the stream of a get_files reply ----------------------------------------------------------


def test_files_stream_in_order_while_the_reader_follows(redis) -> None:
    ref = blobs.new_ref()
    reader = StreamReader(redis, ref)
    follower = threading.Thread(target=reader.follow, args=(lambda: False, 1e12))
    follower.start()

    with StreamWriter(redis, ref) as writer:
        assert writer.file([memoryview(DATA)[:MIB], memoryview(DATA)[MIB:]]) == ref
        writer.file([b"second"])
    follower.join(timeout=10)

    assert reader.ended and not follower.is_alive()
    assert list(reader.files()) == [DATA, b"second"]
    reader.close()
    assert redis.exists(keys.PREFIX + ref) == 0


def test_a_stream_without_files_ends_at_once(redis) -> None:
    ref = blobs.new_ref()
    with StreamWriter(redis, ref):
        pass
    reader = StreamReader(redis, ref)

    reader.follow(lambda: False, 1e12)

    assert reader.ended and list(reader.files()) == []


def test_a_writer_that_fails_midway_still_ends_the_stream(redis) -> None:
    ref = blobs.new_ref()

    def cut() -> object:
        yield DATA[: MIB + MIB // 2]
        raise OSError("the engine's stream broke")

    with pytest.raises(OSError, match="broke"), StreamWriter(redis, ref) as writer:
        writer.file(cut())  # type: ignore[arg-type]
    reader = StreamReader(redis, ref)
    reader.follow(lambda: False, 1e12)

    # the client stops reading at once; the call itself reports the error
    assert reader.ended and list(reader.files()) == [DATA[:MIB]]
    assert redis.exists(keys.PREFIX + ref) == 0


def test_a_reader_gives_up_when_the_call_is_over_or_at_its_deadline(redis, monkeypatch) -> None:
    monkeypatch.setattr(blob_stream, "FOLLOW_POLL_SECONDS", 0.05)
    reader = StreamReader(redis, blobs.new_ref())

    reader.follow(lambda: True, 1e12)  # nothing came and the call is over
    reader.follow(lambda: False, 0.0)  # past the deadline

    assert not reader.ended and list(reader.files()) == []


def test_the_client_matches_streamed_files_to_the_reply_and_checks_their_size() -> None:
    stream = blobs.new_ref()
    read = FilesRead(
        files=[
            FileContent(path="/a", ref=stream, size=3),
            FileContent.of("/small", b"s"),
            FileContent(path="/cut", ref=stream, size=100, truncated=True),
        ]
    )

    def other(ref: str) -> bytes:
        raise AssertionError(ref)

    take = file_calls.stream_take(stream, iter([b"abc", b"first 10 b"]), other)
    data = file_calls.file_bytes(read, take, complete=True)

    assert data == {"/a": b"abc", "/small": b"s", "/cut": b"first 10 b"}
    assert read.files[0].data() == b"abc" and read.files[0].ref is None
    short = FilesRead(files=[FileContent(path="/a", ref=stream, size=4)])
    with pytest.raises(OrchestratorError, match="3 bytes came beside the reply, which says 4"):
        file_calls.file_bytes(short, file_calls.stream_take(stream, iter([b"abc"]), other))
    with pytest.raises(NotFound, match="ended early"):
        file_calls.file_bytes(short, file_calls.stream_take(stream, iter([]), other))


def test_a_writer_whose_redis_fails_says_so_and_leaves_no_thread(redis, monkeypatch) -> None:
    writer = StreamWriter(redis, blobs.new_ref())

    def broken(*args: object, **kwargs: object) -> object:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(redis, "pipeline", broken)
    with pytest.raises(ConnectionError, match="went away"):
        for _ in range(20):  # the failure surfaces at a later file, or at the end
            writer.file([b"x"])
        writer.close()
    with pytest.raises(ConnectionError):
        writer.close()  # again: the same error, no hang
    assert not writer._thread.is_alive()
