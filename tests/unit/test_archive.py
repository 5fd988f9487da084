"""The pure archive helpers: path rules, archives built and read back within the caps."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest

from orchestrator.core import archive
from orchestrator.errors import InvalidRequest


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("/work/main.py", "/work/main.py"),
        ("//work/./a//b/", "/work/a/b"),
        ("/a b/ü.txt", "/a b/ü.txt"),
    ],
)
def test_good_paths_are_normalized(path: str, normalized: str) -> None:
    assert archive.check_path("path", path) == normalized


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("work/main.py", "absolute"),
        ("", "absolute"),
        (None, "absolute"),
        ("/work/../etc/passwd", "'..'"),
        ("/..", "'..'"),
        ("/work/\x00x", "NUL"),
        ("/work/a\nb", "NUL"),
        ("/", "root"),
        ("/./", "root"),
        ("/" + "a" * 5000, "4096"),
    ],
)
def test_bad_paths_are_refused_naming_the_field_and_rule(path: object, rule: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        archive.check_path("files[3].path", path)
    assert str(caught.value).startswith("files[3].path: ")
    assert rule in str(caught.value)


def members(tar_bytes: bytes) -> dict[str, tuple[int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {
            m.name: (m.mode, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def test_an_archive_holds_regular_files_named_from_the_root_with_their_modes() -> None:
    data = bytes(range(256)) * 10
    built = archive.build_archive(
        [("/w/run.sh", b"#!/bin/sh\n", 0o755), ("/w/d/x.bin", data, 0o600)]
    )

    assert members(built) == {"w/run.sh": (0o755, b"#!/bin/sh\n"), "w/d/x.bin": (0o600, data)}


def tar_of(*entries: tarfile.TarInfo | tuple[str, bytes, int]) -> list[bytes]:
    """An engine-like archive, streamed in small chunks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            name, data, mode = entry
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return [raw[i : i + 1000] for i in range(0, len(raw), 1000)]


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def budget(max_file: int = 1 << 20, total: int = 1 << 22, count: int = 100) -> archive.Budget:
    return archive.Budget.for_request(max_file, total, count)


def test_a_directory_gives_its_regular_files_and_skips_links_devices_and_pipes() -> None:
    dir_info = special("out", tarfile.DIRTYPE)
    chunks = tar_of(
        dir_info,
        ("out/a.txt", b"alpha", 0o640),
        ("out/sub/b.bin", b"\xff\x00\xfe", 0o755),
        special("out/root", tarfile.SYMTYPE, "/"),
        special("out/hard", tarfile.LNKTYPE, "out/a.txt"),
        special("out/zero", tarfile.CHRTYPE),
        special("out/fifo", tarfile.FIFOTYPE),
        ("../escape.txt", b"evil", 0o644),
        ("elsewhere.txt", b"evil", 0o644),
    )

    found = archive.read_archive(chunks, "/data/out", budget())

    assert [(f.path, f.data, f.mode, f.truncated) for f in found.files] == [
        ("/data/out/a.txt", b"alpha", 0o640, False),
        ("/data/out/sub/b.bin", b"\xff\x00\xfe", 0o755, False),
    ]
    reasons = {s.path: s.reason for s in found.skipped}
    assert reasons["/data/out/root"].startswith("symbolic link to '/'")
    assert reasons["/data/out/hard"].startswith("hard link")
    assert reasons["/data/out/zero"].startswith("device file")
    assert reasons["/data/out/fifo"].startswith("named pipe")
    assert reasons["../escape.txt"] == reasons["elsewhere.txt"] == "outside the requested path"


def test_a_file_over_the_per_file_cap_is_truncated_with_its_real_size() -> None:
    data = b"x" * 5000
    found = archive.read_archive(tar_of(("big", data, 0o644)), "/big", budget(max_file=1024))

    (item,) = found.files
    assert (item.data, item.size, item.truncated) == (data[:1024], 5000, True)


def test_the_request_budget_is_shared_and_the_count_capped() -> None:
    shared = budget(max_file=1000, total=1500, count=3)
    chunks = tar_of(*[(f"d/f{i}", bytes([i]) * 1000, 0o644) for i in range(4)])

    found = archive.read_archive(chunks, "/d", shared)

    assert [(len(f.data), f.truncated) for f in found.files] == [
        (1000, False),
        (500, True),
        (0, True),
    ]
    assert [s.reason for s in found.skipped] == ["over ORCHESTRATOR_FILES_MAX_COUNT files"]


def test_an_archive_streaming_past_the_budget_stops_the_read() -> None:
    header = tarfile.TarInfo("x")
    header.size = 10**12  # a file that says it is huge, and streams for ever

    def endless() -> Iterator[bytes]:
        yield header.tobuf()
        while True:
            yield b"x" * 65536

    tiny = archive.Budget(max_file_bytes=10, content_bytes=10, files=1, stream_bytes=1 << 20)

    with pytest.raises(archive.ArchiveTooLarge, match="ORCHESTRATOR_FILES_MAX_REQUEST_BYTES"):
        archive.read_archive(endless(), "/d", tiny)


def test_go_modes_tell_directories_and_links() -> None:
    assert archive.is_directory(archive.GO_DIR | 0o755)
    assert not archive.is_directory(0o644)
    assert archive.is_symlink(archive.GO_SYMLINK | 0o777)


def test_skipped_members_are_listed_up_to_a_maximum_then_counted() -> None:
    links = [
        special(f"d/l{i}", tarfile.SYMTYPE, "/") for i in range(archive.MAX_SKIPPED_LISTED + 7)
    ]

    found = archive.read_archive(tar_of(*links), "/d", budget())

    assert len(found.skipped) == archive.MAX_SKIPPED_LISTED
    assert found.unlisted == 7


def test_a_tar_stream_sends_the_files_bytes_as_given_and_reads_back_the_same() -> None:
    data = bytes(range(256)) * 5000
    name = "/w/é" + "x" * 120  # a long, non-ASCII name: a PAX header
    stream = archive.tar_stream(
        [(name, data, 0o600), ("/w/parts", [b"ab", memoryview(b"cd")], 0o644)]
    )

    assert any(piece is data for piece in stream)  # never copied into one archive
    assert len(stream) == len(stream.getvalue()) and len(stream) % 512 == 0
    assert members(stream.getvalue()) == {name[1:]: (0o600, data), "w/parts": (0o644, b"abcd")}


def test_large_files_go_apart_as_they_stream_and_small_ones_stay() -> None:
    big = bytes(range(256)) * 40
    kept: list[bytes] = []

    def keep(pieces: Iterator[memoryview]) -> str:
        kept.append(b"".join(pieces))  # several pieces: the archive came in 1000-byte chunks
        return "ref-1"

    found = archive.read_archive(
        tar_of(("d/big", big, 0o644), ("d/small", b"s", 0o644)),
        "/d",
        budget(),
        apart=archive.Apart(100, keep),
    )

    assert [(f.path, f.data, f.ref, f.size) for f in found.files] == [
        ("/d/big", b"", "ref-1", len(big)),
        ("/d/small", b"s", None, 1),
    ]
    assert kept == [big]


def test_a_stream_cut_inside_a_file_is_an_error_not_a_short_file() -> None:
    chunks = tar_of(("big", b"z" * 5000, 0o644))

    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        archive.read_archive(chunks[:3], "/big", budget())
