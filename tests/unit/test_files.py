"""Files of relics and tool runs on the in-memory engine: what is written, what comes
back, what is refused, and where large collected files are kept."""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Any

import pytest

from orchestrator.client import files as file_calls
from orchestrator.core.archive import build_archive
from orchestrator.core.types import ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import (
    DockerUnavailable,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PathNotFound,
    RelicNotFound,
    WrongHost,
)
from orchestrator.models import FileContent, FilesRead, PoolSpec, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import blob_stream, blobs, collected, keys
from orchestrator.state import relics as relic_registry
from orchestrator.state.relics import RelicEntry
from orchestrator.worker import files
from orchestrator.worker.execution import run_execution
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env(
    {},
    host_name="h1",
    wait_slice_seconds=0.05,
    files_max_file_bytes=4096,
    files_max_request_bytes=10_000,
    collect_inline_max_bytes=100,
)
BINARY = bytes(range(256)) * 8  # 2 KiB, every byte value, not UTF-8


@pytest.fixture
def rt(redis, engine) -> Runtime:
    return Runtime(SETTINGS, redis, engine=engine)


@pytest.fixture
def relic(rt: Runtime, engine: FakeEngine) -> str:
    """A relic on this host whose container runs (its name is in the registry)."""
    engine.add_image("ws:1", FakeProgram(run_seconds=None))
    box = engine.create_container(ContainerSpec(name="orch-relic-2-s1-ws", image="ws:1", labels={}))
    engine.start_container(box.id)
    relic_registry.register(
        rt.redis, RelicEntry("r1", "ws", "s1", host="h1", container_name="orch-relic-2-s1-ws")
    )
    return "r1"


def test_files_round_trip_byte_for_byte_with_their_modes_and_directories(rt, relic) -> None:
    written = files.put_relic_files(
        rt,
        relic,
        [
            FileContent.of("/work/bin/run.sh", "#!/bin/sh\necho hi\n", 0o755),
            FileContent.of("/work/data/blob.bin", BINARY, 0o600),
            FileContent.of("/work/data/deep/x.txt", "ü\n"),
        ],
    )
    assert (written.written, written.bytes) == (
        ["/work/bin/run.sh", "/work/data/blob.bin", "/work/data/deep/x.txt"],
        18 + len(BINARY) + 3,
    )

    back = files.get_relic_files(rt, relic, ["/work/data", "/work/bin/run.sh", "/nope"])

    got = {f.path: (f.data(), f.mode, f.size, f.truncated) for f in back.files}
    assert got == {
        "/work/data/blob.bin": (BINARY, 0o600, len(BINARY), False),
        "/work/data/deep/x.txt": ("ü\n".encode(), 0o644, 3, False),
        "/work/bin/run.sh": (b"#!/bin/sh\necho hi\n", 0o755, 18, False),
    }
    assert back.missing == ["/nope"]
    assert back.relic_id == relic


def test_a_file_where_a_directory_is_is_refused_and_nothing_is_written(rt, relic, engine) -> None:
    files.put_relic_files(rt, relic, [FileContent.of("/work/keep.txt", "kept")])

    with pytest.raises(InvalidRequest, match="/work is a directory"):
        files.put_relic_files(
            rt, relic, [FileContent.of("/other.txt", "x"), FileContent.of("/work", "x")]
        )

    back = files.get_relic_files(rt, relic, ["/work/keep.txt", "/other.txt"])
    assert [f.data() for f in back.files] == [b"kept"]
    assert back.missing == ["/other.txt"]


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ([FileContent.of("/big", b"x" * 5000)], "ORCHESTRATOR_FILES_MAX_FILE_BYTES"),
        (
            [FileContent.of(f"/f{i}", b"x" * 4000) for i in range(3)],
            "ORCHESTRATOR_FILES_MAX_REQUEST_BYTES",
        ),
        (  # past the model's own check (model_construct): the worker checks again
            [FileContent.model_construct(path="/a/../etc/passwd", text="x", mode=0o644)],
            r"files\[0\]\.path: .*'\.\.'",
        ),
        ([FileContent.of("/a", "1"), FileContent.of("//a/", "2")], "paths given twice: /a"),
    ],
)
def test_bad_or_oversize_files_are_refused_naming_the_rule(rt, relic, wanted, message) -> None:
    with pytest.raises((InvalidRequest, LimitExceeded), match=message):
        files.put_relic_files(rt, relic, wanted)
    assert files.get_relic_files(rt, relic, ["/big", "/f0", "/a"]).files == []


def test_links_are_reported_never_followed(rt, relic, engine) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("tmp/root")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        tar.addfile(link)
    engine.put_archive("orch-relic-2-s1-ws", "/", buffer.getvalue())
    engine.put_archive(
        "orch-relic-2-s1-ws", "/", build_archive([("/etc/hostname", b"ws\n", 0o644)])
    )

    back = files.get_relic_files(rt, relic, ["/tmp/root", "/tmp/root/etc/hostname", "/tmp"])

    # through the link the engine resolves inside the container: its own /etc/hostname
    assert [(f.path, f.data()) for f in back.files] == [("/tmp/root/etc/hostname", b"ws\n")]
    assert [s.path for s in back.skipped] == ["/tmp/root", "/tmp/root"]
    assert all("symbolic link to '/'" in s.reason for s in back.skipped)


def test_a_file_over_the_cap_comes_back_truncated(rt, relic, engine) -> None:
    engine.put_archive("orch-relic-2-s1-ws", "/", build_archive([("/big", b"y" * 9000, 0o644)]))

    (item,) = files.get_relic_files(rt, relic, ["/big"]).files

    assert (len(item.data()), item.size, item.truncated) == (4096, 9000, True)


def test_a_relic_on_another_host_is_forwarded(rt, redis) -> None:
    relic_registry.register(redis, RelicEntry("r2", "ws", "s2", host="h2", container_name="c"))
    rt.hosts.beat("h2", {})  # h2 is alive: the call goes there

    with pytest.raises(WrongHost):
        files.get_relic_files(rt, "r2", ["/x"])


def tool(**fields: Any) -> ToolExecutionRequest:
    return ToolExecutionRequest(
        session_id="s1", tool_name="t", image="cat:1", command=["cat"], **fields
    )


def test_a_tool_run_gets_its_files_and_stdin_and_its_outputs_are_collected(rt, engine) -> None:
    engine.add_image("cat:1", FakeProgram(echoes_stdin=True))
    request = tool(
        files=[FileContent.of("/in/small.txt", "hello"), FileContent.of("/in/big.bin", BINARY)],
        stdin="from stdin\n",
        collect=["/in", "/missing"],
    )

    result = run_execution(rt, request, "e1")

    assert result.status == "succeeded"
    assert result.stdout == "from stdin\n"
    by_path = {f.path: f for f in result.files}
    assert by_path["/in/small.txt"].data() == b"hello"  # small: inline
    big = by_path["/in/big.bin"]  # over collect_inline_max_bytes: kept beside the result
    assert (big.content_base64, big.size, big.ref) == (None, len(BINARY), "e1:0")
    assert collected.load(rt.redis, big.ref) == BINARY
    assert 0 < rt.redis.ttl(keys.collected_file("e1", 0)) <= SETTINGS.result_ttl_seconds
    assert result.missing_files == ["/missing"]
    (spec,) = [s for (s,) in engine.called("create_container")]
    assert spec.stdin_open and not spec.mounts  # no bind mount carries the files


def test_a_tool_run_with_bad_files_is_refused_before_anything_starts(rt, engine) -> None:
    request = tool(files=[FileContent.of("/x", b"z" * 5000)])

    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        run_execution(rt, request, "e2")
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_REQUEST_BYTES"):
        run_execution(rt, tool(stdin="s" * 20_000), "e3")
    with pytest.raises(InvalidRequest, match=r"collect\[0\]"):
        run_execution(rt, tool(collect=["/out/../etc"]), "e4")
    assert engine.called("create_container") == []


def test_file_content_refuses_bad_base64_and_two_contents(rt, relic) -> None:
    with pytest.raises(InvalidRequest, match="/x: content_base64 is not valid base64"):
        files.put_relic_files(rt, relic, [FileContent(path="/x", content_base64="@@@")])
    with pytest.raises(ValueError, match="not both"):
        FileContent(path="/x", content_base64=base64.b64encode(b"a").decode(), text="a")


def test_large_files_travel_beside_the_message_both_ways(rt, relic) -> None:
    ref = blobs.put(rt.redis, BINARY)

    written = files.put_relic_files(rt, relic, [FileContent(path="/w/big.bin", ref=ref)])

    assert written.bytes == len(BINARY)
    assert rt.redis.exists(keys.PREFIX + ref) == 0  # taken: read once, then gone
    read = files.get_relic_files(rt, relic, ["/w/big.bin"], inline_max_bytes=1024)
    (item,) = read.files
    assert item.content_base64 is None and blobs.is_blob_ref(item.ref)
    assert blobs.take(rt.redis, item.ref) == BINARY


@pytest.mark.parametrize("ref", ["e1:0", "blob:../../orch:exec:e1", "orch:lease:x"])
def test_a_ref_names_no_other_redis_key(rt, relic, ref) -> None:
    rt.redis.set("orch:lease:x", b"not yours")
    with pytest.raises(InvalidRequest, match="not a file reference"):
        files.put_relic_files(rt, relic, [FileContent(path="/w/x", ref=ref)])


def test_a_tool_run_reads_its_files_beside_the_message_and_deletes_them_once_over(
    rt, engine
) -> None:
    engine.add_image("cat:1", FakeProgram())
    ref = blobs.put(rt.redis, BINARY)
    request = tool(files=[FileContent(path="/in/x", ref=ref, size=len(BINARY))], collect=["/in/x"])
    engine.fail_next("start_container", DockerUnavailable("the engine restarts"))

    with pytest.raises(DockerUnavailable):  # Celery retries it: the file must still be there
        run_execution(rt, request, "e5")
    assert rt.redis.exists(keys.PREFIX + ref) == 1
    result = run_execution(rt, request, "e5")

    assert result.status == "succeeded"
    assert collected.load(rt.redis, result.files[0].ref or "") == BINARY
    assert rt.redis.exists(keys.PREFIX + ref) == 0  # the run is over: deleted


def test_a_tool_run_over_the_caps_by_its_declared_sizes_is_refused_and_its_blobs_go(
    rt, engine
) -> None:
    ref = blobs.put(rt.redis, BINARY)
    request = tool(files=[FileContent(path="/in/x", ref=ref, size=5000)])

    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        run_execution(rt, request, "e6")
    assert engine.called("create_container") == []
    assert rt.redis.exists(keys.PREFIX + ref) == 0


@pytest.mark.parametrize(
    ("length", "size", "error", "message"),
    [
        (5000, None, LimitExceeded, "more than 4096 bytes.*ORCHESTRATOR_FILES_MAX_FILE_BYTES"),
        (5000, 5000, LimitExceeded, "has 5000 bytes.*ORCHESTRATOR_FILES_MAX_FILE_BYTES"),
        (3500, 10, InvalidRequest, "has 3500 bytes, its size says 10"),
    ],
    ids=["oversize", "declared-oversize", "lying-size"],
)
def test_an_oversize_or_lying_blob_writes_nothing_and_every_blob_goes(
    rt, relic, length, size, error, message
) -> None:
    good = blobs.put(rt.redis, b"g" * 3000)
    bad = blobs.put(rt.redis, b"b" * length)
    wanted = [
        FileContent(path="/w/good", ref=good, size=3000),
        FileContent(path="/w/bad", ref=bad, size=size),
    ]

    with pytest.raises(error, match=message):
        files.put_relic_files(rt, relic, wanted)

    assert files.get_relic_files(rt, relic, ["/w"]).missing == ["/w"]  # not even /w/good
    assert list(rt.redis.scan_iter("orch:blob:*")) == []


def test_a_missing_blob_fails_clearly_and_writes_nothing(rt, relic) -> None:
    good = blobs.put(rt.redis, b"g" * 3000)
    wanted = [FileContent(path="/w/good", ref=good), FileContent(path="/w/x", ref=blobs.new_ref())]

    with pytest.raises(NotFound, match=r"files\[1\]: /w/x: ref: blob:\w+ expired or was used"):
        files.put_relic_files(rt, relic, wanted)

    assert files.get_relic_files(rt, relic, ["/w"]).missing == ["/w"]
    assert list(rt.redis.scan_iter("orch:blob:*")) == []


def test_get_files_streams_its_large_files_in_order_to_the_reader(rt, relic) -> None:
    files.put_relic_files(
        rt, relic, [FileContent.of("/w/a", BINARY), FileContent.of("/w/b", b"b" * 3000)]
    )
    stream = blobs.new_ref()

    read = files.get_relic_files(rt, relic, ["/w", "/w/a"], inline_max_bytes=1000, stream=stream)

    # a directory, then a file again: every file above 1000 bytes on the stream, in order
    assert [(f.path, f.ref, f.size) for f in read.files] == [
        ("/w/a", stream, len(BINARY)),
        ("/w/b", stream, 3000),
        ("/w/a", stream, len(BINARY)),
    ]
    reader = blob_stream.StreamReader(rt.redis, stream)
    reader.drain()
    assert reader.ended
    take = file_calls.stream_take(stream, reader.files(), lambda ref: b"")
    file_calls.file_bytes(read, take, complete=True)
    assert [f.data() for f in read.files] == [BINARY, b"b" * 3000, BINARY]
    assert list(rt.redis.scan_iter("orch:blob:*")) == []


def test_the_client_stashes_large_files_and_checks_a_read_is_complete() -> None:
    stashed: list[bytes] = []

    def stash(data: bytes) -> str:
        stashed.append(data)
        return "blob:" + "0" * 32

    items = file_calls.file_list({"/a": b"x" * 70_000, "/b": "small"}, 0o600, stash)

    assert [(i.path, i.ref, i.mode) for i in items] == [
        ("/a", "blob:" + "0" * 32, 0o600),
        ("/b", None, 0o600),
    ]
    assert stashed == [b"x" * 70_000]
    run = tool(files=[FileContent.of("/in/big", b"y" * 70_000), FileContent.of("/in/s", "s")])
    sent = file_calls.stash_run_files(run, stash)
    assert [(f.path, f.ref, f.size, f.content_base64) for f in sent.files] == [
        ("/in/big", "blob:" + "0" * 32, 70_000, None),
        ("/in/s", None, None, None),
    ]
    assert stashed[-1] == b"y" * 70_000 and sent.files[1].text == "s"
    with pytest.raises(InvalidRequest, match="paths\\[0\\]"):
        file_calls.checked_paths(["/ok/../no"])
    cut = FilesRead(files=[FileContent.of("/big", b"x", size=9, truncated=True)])
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_FILES_MAX_FILE_BYTES"):
        file_calls.check_complete(cut, ["/big"])
    with pytest.raises(PathNotFound, match="/gone"):
        file_calls.check_complete(FilesRead(missing=["/gone"]), ["/gone"])


@pytest.mark.parametrize(
    "extra",
    [{"files": [FileContent.of("/in/x", "x")]}, {"collect": ["/out"]}, {"stdin": "x"}],
    ids=["files", "collect", "stdin"],
)
def test_runs_with_files_stdin_or_collect_may_take_a_pool_container(extra) -> None:
    spec = PoolSpec(image="cat:1", size=1)
    limits = {"resource_limits": {"memory_mb": 512, "cpu_limit": 1.0}}

    assert spec.matches(tool(**limits, **extra), 256)
    assert not spec.matches(tool(resource_limits={"memory_mb": 256}, **extra), 256)


def test_a_read_that_fails_first_ends_its_stream_but_a_forwarded_one_does_not(rt) -> None:
    ended, forwarded = blobs.new_ref(), blobs.new_ref()
    relic_registry.register(rt.redis, RelicEntry("r2", "ws", "s2", host="h2", container_name="c"))
    rt.hosts.beat("h2", {})

    with pytest.raises(RelicNotFound):
        files.get_relic_files(rt, "nope", ["/x"], 1024, stream=ended)
    with pytest.raises(WrongHost):  # h2 answers, into the same stream
        files.get_relic_files(rt, "r2", ["/x"], 1024, stream=forwarded)

    reader = blob_stream.StreamReader(rt.redis, ended)
    reader.drain()
    assert reader.ended  # the client stops waiting at once; the reply says why
    assert rt.redis.exists(keys.PREFIX + forwarded) == 0
