"""Files in and out of containers as tar archives.

Docker reports an archived path's mode as a Go ``os.FileMode`` (directory bit 1<<31,
symlink 1<<27, setuid 1<<23, setgid 1<<22, sticky 1<<20, then the permission bits),
while the tar headers it writes keep the Unix file-type bits (``0o100644`` for a file,
``0o40755`` for a directory, ``0o120777`` for a symlink).
"""

from __future__ import annotations

import pytest

from orchestrator.errors import ContainerNotFound, DockerError, PathNotFound
from tests.contract.harness import Harness, Member, TarEntry, make_tar, read_tar
from tests.contract.scenarios import EXITS_0, SLEEPS

GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_SETUID = 1 << 23
GO_STICKY = 1 << 20

FILES = make_tar(
    TarEntry("box", mode=0o750, kind="dir"),
    TarEntry("box/run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
    TarEntry("box/data.txt", b"hello", mode=0o640),
    TarEntry("box/.env", b"A=1\n", mode=0o600),
    TarEntry("box/sub", mode=0o700, kind="dir"),
    TarEntry("box/sub/deep.txt", b"deep", mode=0o644),
    TarEntry("top.txt", b"top", mode=0o644),
)


def test_a_file_round_trips_with_its_mode(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id

    engine.put_archive(ref, "/", FILES)
    chunks, stat = engine.get_archive(ref, "/box/run.sh")

    assert (stat.name, stat.size, stat.mode, stat.link_target) == ("run.sh", 18, 0o755, "")
    assert read_tar(chunks) == {
        "run.sh": Member(mode=0o100755, kind="file", data=b"#!/bin/sh\necho hi\n")
    }


def test_a_directory_round_trips_with_everything_under_it(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(ref, "/", FILES)

    for path in ("/box", "/box/"):
        chunks, stat = engine.get_archive(ref, path)

        assert stat.name == "box"
        assert stat.mode == GO_DIR | 0o750
        assert stat.size > 0  # the file system's directory size
        assert read_tar(chunks) == {
            "box": Member(mode=0o40750, kind="dir"),
            "box/.env": Member(mode=0o100600, kind="file", data=b"A=1\n"),
            "box/data.txt": Member(mode=0o100640, kind="file", data=b"hello"),
            "box/run.sh": Member(mode=0o100755, kind="file", data=b"#!/bin/sh\necho hi\n"),
            "box/sub": Member(mode=0o40700, kind="dir"),
            "box/sub/deep.txt": Member(mode=0o100644, kind="file", data=b"deep"),
        }


def test_put_into_a_directory_and_missing_parents(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(ref, "/", FILES)

    engine.put_archive(ref, "/box/sub", make_tar(TarEntry("./inner/leaf.txt", b"leaf", mode=0o604)))

    chunks, stat = engine.get_archive(ref, "/box/sub/inner")
    assert stat.mode == GO_DIR | 0o755  # created for the file, with 0755
    assert read_tar(chunks) == {
        "inner": Member(mode=0o40755, kind="dir"),
        "inner/leaf.txt": Member(mode=0o100604, kind="file", data=b"leaf"),
    }


def test_a_directory_mode_is_replaced_by_a_later_archive(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(ref, "/", FILES)

    engine.put_archive(ref, "/", make_tar(TarEntry("box", mode=0o711, kind="dir")))

    _, stat = engine.get_archive(ref, "/box")
    assert stat.mode == GO_DIR | 0o711
    _, kept = engine.get_archive(ref, "/box/data.txt")
    assert kept.size == 5


def test_symlinks_and_special_mode_bits(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(
        ref,
        "/",
        make_tar(
            TarEntry("sticky", mode=0o1777, kind="dir"),
            TarEntry("suid", b"x", mode=0o4755),
            TarEntry("link", kind="symlink", link="suid", mode=0o777),
        ),
    )

    chunks, link = engine.get_archive(ref, "/link")
    assert (link.name, link.size, link.mode) == ("link", 4, GO_SYMLINK | 0o777)
    assert link.link_target == "/suid"  # resolved, absolute in the container
    assert read_tar(chunks) == {"link": Member(mode=0o120777, kind="symlink", link="suid")}

    chunks, sticky = engine.get_archive(ref, "/sticky")
    assert sticky.mode == GO_DIR | GO_STICKY | 0o777
    assert read_tar(chunks) == {"sticky": Member(mode=0o41777, kind="dir")}

    chunks, suid = engine.get_archive(ref, "/suid")
    assert suid.mode == GO_SETUID | 0o755
    assert read_tar(chunks) == {"suid": Member(mode=0o104755, kind="file", data=b"x")}


def test_archives_work_in_stopped_containers(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(EXITS_0)
    assert engine.wait_container(ref, 10) == 0

    engine.put_archive(ref, "/", make_tar(TarEntry("after.txt", b"later")))

    chunks, stat = engine.get_archive(ref, "/after.txt")
    assert stat.size == 5
    assert read_tar(chunks)["after.txt"].data == b"later"


def test_missing_paths_are_path_not_found(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id

    with pytest.raises(PathNotFound):
        engine.get_archive(ref, "/no/such/file")
    with pytest.raises(PathNotFound):
        engine.put_archive(ref, "/no-such-dir", FILES)


def test_extracting_into_a_file_is_refused(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(ref, "/", FILES)

    with pytest.raises(DockerError) as info:
        engine.put_archive(ref, "/top.txt", FILES)

    assert not isinstance(info.value, PathNotFound | ContainerNotFound)


def test_missing_containers_are_container_not_found(harness: Harness) -> None:
    missing = harness.name("missing")

    with pytest.raises(ContainerNotFound):
        harness.engine.get_archive(missing, "/")
    with pytest.raises(ContainerNotFound):
        harness.engine.put_archive(missing, "/", FILES)


def test_a_file_never_replaces_a_directory_nor_the_reverse(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(SLEEPS)).id
    engine.put_archive(ref, "/", FILES)

    with pytest.raises(DockerError, match="cannot overwrite directory"):
        engine.put_archive(ref, "/", make_tar(TarEntry("box/sub", b"a file", mode=0o644)))
    with pytest.raises(DockerError, match="cannot overwrite non-directory"):
        engine.put_archive(ref, "/", make_tar(TarEntry("top.txt", mode=0o755, kind="dir")))

    chunks, stat = engine.get_archive(ref, "/box/sub")
    assert stat.mode == GO_DIR | 0o700
    assert read_tar(chunks)["sub/deep.txt"].data == b"deep"
